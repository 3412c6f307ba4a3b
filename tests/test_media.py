"""Media and buttons (SPEC 4 "Media"): voice notes, images and documents on WhatsApp and Telegram,
reply buttons and their taps, voice replies, and a polite reply whenever media cannot be handled.

The Graph API, the Bot API (tests/support/channel_fakes.py) and the OpenAI API, chat and audio
(tests/support/fake_llm.py), are local stand-ins; the project's real clients call them.
The voice note is real speech: espeak-ng speaks the question, ffmpeg makes it Ogg/Opus (what
WhatsApp and Telegram voice notes are), and the transcription stand-in checks that format.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from services.worker.engines.kbfile import KnowledgeBaseError, parse
from services.worker.media import POLITE, MediaResolver
from shared.conversations import Keys
from shared.messages import Attachment, InboundMessage
from shared.names import Names
from shared.settings import ConfigError, Settings
from shared.speech import SpeechConfig, synthesise
from tests.support import (
    PRAZO,
    REDIS_URL,
    TEST_SHARDS,
    Stack,
    conversation_token,
    eventually,
    free_port,
    post_message,
    sse_events,
    stored_reply,
)
from tests.support.channel_fakes import (
    PHONE_NUMBER_ID,
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    FakeChannelApi,
    Received,
    kb_answer,
    post_telegram,
    post_whatsapp,
    telegram_media,
    telegram_tap,
    telegram_text,
    whatsapp_message,
    whatsapp_tap,
    whatsapp_text,
)
from tests.support.fake_llm import LLM_TEXT, SPEECH_AUDIO, FakeLlm
from tests.support.pdfs import tiny_pdf
from tests.support.pipeline import wait_ready

ROOT = Path(__file__).resolve().parent.parent
PRAZO_ANSWER = kb_answer("prazo-entrega")
PAYMENT = "Quais as formas de pagamento?"
# An entry's own buttons: options whose id is their label.
PAYMENT_OPTIONS = [("Posso parcelar?", "Posso parcelar?"), ("Boleto vencido", "Boleto vencido")]
HANDOFF = ("handoff", "Falar com atendente")
MEDIA_MAX_BYTES = 64 * 1024
polite = POLITE["pt"]


@pytest.fixture(scope="module")
def voice_note(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The question spoken, as an Ogg/Opus voice note."""
    if not (shutil.which("espeak-ng") and shutil.which("ffmpeg")):
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-test-tools.sh")], check=False)
    if not (shutil.which("espeak-ng") and shutil.which("ffmpeg")):
        pytest.skip("espeak-ng and ffmpeg could not be installed (scripts/ensure-test-tools.sh)")
    folder = tmp_path_factory.mktemp("voice")
    wav, ogg = folder / "question.wav", folder / "question.ogg"
    subprocess.run(["espeak-ng", "-v", "pt-br", "-w", str(wav), PRAZO], check=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "libopus", "-b:a", "24k", str(ogg)], check=True
    )
    return ogg.read_bytes()


def is_ogg_opus(data: bytes) -> bool:
    """An Ogg stream whose first page is an Opus identification header."""
    return data[:4] == b"OggS" and b"OpusHead" in data[:64]


async def delivered(api: FakeChannelApi, recipient: str | int, count: int) -> list[Received]:
    async def arrived() -> list[Received] | None:
        got = api.delivered_to(recipient)
        return got if len(got) >= count else None

    return await eventually(arrived, what=f"{count} deliveries to {recipient}")


def wa_voice(wamid: str, sender: str, media_id: str) -> dict[str, Any]:
    return whatsapp_message(
        wamid, sender, "audio", {"id": media_id, "mime_type": "audio/ogg; codecs=opus", "voice": True}
    )


def tg_voice(update_id: int, chat_id: int, file_id: str, size: int) -> dict[str, Any]:
    voice = {"file_id": file_id, "file_unique_id": "u" + file_id, "duration": 2, "mime_type": "audio/ogg"}
    return telegram_media(update_id, chat_id, "voice", {**voice, "file_size": size})


def wa_attached(message_id: str, sender: str, attachment: Attachment | None, text: str = "") -> InboundMessage:
    """A WhatsApp message as the gateway queues it, carrying `attachment`."""
    return InboundMessage(
        message_id=message_id,
        conversation_id=f"whatsapp:{PHONE_NUMBER_ID}:{sender}",
        user_id=sender,
        text=text,
        channel="whatsapp",
        metadata={"phone_number_id": PHONE_NUMBER_ID, "to": sender},
        attachment=attachment,
    )


async def conversation_log(namespace: str, conversation_id: str) -> list[dict[str, Any]]:
    redis = Redis.from_url(REDIS_URL)
    try:
        entries = await redis.lrange(Names(namespace, TEST_SHARDS).conversation_log_key(conversation_id), 0, -1)
    finally:
        await redis.aclose()
    return [orjson.loads(entry) for entry in entries]


async def test_voice_buttons_and_polite_replies_with_the_knowledge_base(
    stack: Stack, http: aiohttp.ClientSession, api: FakeChannelApi, llm: FakeLlm, voice_note: bytes
) -> None:
    channels = {**WHATSAPP_ENV, **TELEGRAM_ENV, **api.env()}
    audio = {"TRANSCRIPTION_BASE_URL": llm.url, "TRANSCRIPTION_MAX_RETRIES": "1"}
    gateway = await stack.start("gateway", **channels, **audio, VOICE_REPLIES="on")
    worker = await stack.start("worker", **channels, **audio, MEDIA_MAX_BYTES=str(MEDIA_MAX_BYTES))
    await wait_ready(stack)

    # A WhatsApp voice note asking a question of the base: its answer, in text and spoken.
    sender = "5511900000001"
    api.add_media("wa-voice-1", voice_note, "audio/ogg; codecs=opus")
    status, _ = await post_whatsapp(http, gateway, wa_voice("wamid.voice-1", sender, "wa-voice-1"))
    assert status == 200
    text, voice = await delivered(api, sender, 2)
    assert text.text == PRAZO_ANSWER and voice.body == {
        "messaging_product": "whatsapp",
        "to": sender,
        "type": "audio",
        "audio": {"id": voice.body["audio"]["id"]},
    }
    [upload] = api.uploads
    assert upload.file == ("audio/ogg", SPEECH_AUDIO) and upload.body["messaging_product"] == "whatsapp"
    [speech] = llm.speeches
    assert speech["input"] == PRAZO_ANSWER and speech["response_format"] == "opus"
    [transcription] = llm.transcriptions
    assert transcription["content_type"] == "multipart/form-data" and transcription["model"] == "whisper-1"
    assert transcription["file"] == voice_note  # the exact bytes the customer sent
    assert is_ogg_opus(transcription["file"]) and transcription["filename"].endswith(".ogg")
    # The conversation log (the admin's view, memory alike) has the transcript, marked as a voice note.
    [entry] = await conversation_log(stack.namespace, f"whatsapp:{PHONE_NUMBER_ID}:{sender}")
    assert entry["text"] == f"🎤 {PRAZO}"

    # The same on Telegram: getFile, the file, the transcript answered, then sendVoice.
    chat = 700_100_001
    api.add_media("tg-voice-1", voice_note, "audio/ogg")
    status, _ = await post_telegram(http, gateway, tg_voice(910_000_001, chat, "tg-voice-1", len(voice_note)))
    assert status == 200
    text, voice = await delivered(api, chat, 2)
    assert text.text == PRAZO_ANSWER and voice.is_voice and voice.file == ("audio/ogg", SPEECH_AUDIO)
    assert llm.transcriptions[1]["file"] == voice_note

    # Buttons out on both channels as options, and a tap answered like the label typed.
    sender = "5511900000002"
    await post_whatsapp(http, gateway, whatsapp_text("wamid.pay-1", sender, PAYMENT))
    [offer] = await delivered(api, sender, 1)
    assert offer.text == kb_answer("formas-pagamento")
    assert offer.interactive == "button" and offer.options == PAYMENT_OPTIONS
    await post_whatsapp(http, gateway, whatsapp_tap("wamid.tap-1", sender, *PAYMENT_OPTIONS[0]))
    assert (await delivered(api, sender, 2))[1].text == kb_answer("parcelamento")

    chat = 700_100_002
    await post_telegram(http, gateway, telegram_text(910_000_010, chat, PAYMENT))
    [offer] = await delivered(api, chat, 1)
    assert offer.options == PAYMENT_OPTIONS
    tap = telegram_tap(910_000_011, chat, "Posso parcelar?", keyboard=offer.options)
    status, body = await post_telegram(http, gateway, tap)
    assert status == 200
    assert body == {
        "accepted": 1,
        "duplicates": 0,
        "method": "answerCallbackQuery",
        "callback_query_id": "cbq-910000011",
    }
    assert (await delivered(api, chat, 2))[1].text == kb_answer("parcelamento")

    # The handoff offer of the fallback is an option; tapping it asks for a human.
    sender = "5511900000003"
    await post_whatsapp(http, gateway, whatsapp_text("wamid.unknown-1", sender, "qual a capital da mongólia?"))
    [fallback] = await delivered(api, sender, 1)
    assert fallback.interactive == "button" and fallback.options == [HANDOFF]
    await post_whatsapp(http, gateway, whatsapp_tap("wamid.tap-2", sender, *HANDOFF))
    assert "atendente humano" in (await delivered(api, sender, 2))[1].text

    # The knowledge base answers an image's caption, and says politely that it cannot see one alone.
    sender = "5511900000004"
    image = {"id": "wa-image-1", "mime_type": "image/jpeg"}
    await post_whatsapp(http, gateway, whatsapp_message("wamid.img-1", sender, "image", {**image, "caption": PRAZO}))
    assert (await delivered(api, sender, 1))[0].text == PRAZO_ANSWER
    await post_whatsapp(http, gateway, whatsapp_message("wamid.img-2", sender, "image", image))
    assert (await delivered(api, sender, 2))[1].text == polite["image_not_read"]
    assert not any("wa-image-1" in path for path in api.media_requests)  # nothing here reads it

    # Over MEDIA_MAX_BYTES: declared (never downloaded), or lied about (cut while streaming).
    sender = "5511900000005"
    api.add_media("wa-big-1", bytes(MEDIA_MAX_BYTES + 1), "audio/ogg")
    api.add_media("wa-big-2", bytes(4 * MEDIA_MAX_BYTES), "audio/ogg", declared_size=1000)
    await post_whatsapp(http, gateway, wa_voice("wamid.big-1", sender, "wa-big-1"))
    await post_whatsapp(http, gateway, wa_voice("wamid.big-2", sender, "wa-big-2"))
    replies = await delivered(api, sender, 2)
    assert [r.text for r in replies] == [polite["too_large"]] * 2
    assert not any(r.is_voice for r in replies)  # only an understood voice note is answered aloud
    assert api.media["wa-big-1"].fetches == 0 and api.media["wa-big-2"].fetches == 1
    assert len(llm.transcriptions) == 2  # neither reached the transcription

    # A transcription that keeps failing: one retry (TRANSCRIPTION_MAX_RETRIES=1), then politeness.
    chat = 700_100_003
    llm.audio_script.extend([500, 503])
    api.add_media("tg-voice-2", voice_note, "audio/ogg")
    await post_telegram(http, gateway, tg_voice(910_000_020, chat, "tg-voice-2", len(voice_note)))
    assert (await delivered(api, chat, 1))[0].text == polite["audio_failed"]
    assert len(llm.transcriptions) == 4
    # A download that fails (the platform does not know the media id): politeness too.
    await post_telegram(http, gateway, tg_voice(910_000_021, chat, "tg-missing", 100))
    assert (await delivered(api, chat, 2))[1].text == polite["unavailable"]

    # A document is for the LLM; other types are politely refused by every engine.
    chat = 700_100_004
    pdf = {"file_id": "tg-pdf-1", "file_unique_id": "p1", "file_name": "fatura.pdf", "mime_type": "application/pdf"}
    docx = {**pdf, "file_id": "tg-docx-1", "file_name": "notes.docx", "mime_type": "application/msword"}
    await post_telegram(http, gateway, telegram_media(910_000_030, chat, "document", pdf))
    await post_telegram(http, gateway, telegram_media(910_000_031, chat, "document", docx))
    replies = await delivered(api, chat, 2)
    assert [r.text for r in replies] == [polite["documents_not_read"], polite["document_not_read"]]

    # No transcription configured (no OPENAI_API_KEY nor TRANSCRIPTION_BASE_URL): politeness.
    worker.stop()
    await stack.start("worker", **channels)
    await wait_ready(stack)
    sender = "5511900000006"
    api.add_media("wa-voice-3", voice_note, "audio/ogg; codecs=opus")
    await post_whatsapp(http, gateway, wa_voice("wamid.voice-3", sender, "wa-voice-3"))
    [reply] = await delivered(api, sender, 1)
    assert reply.text == polite["no_transcription"]
    assert len(llm.transcriptions) == 4 and api.media["wa-voice-3"].fetches == 0


async def test_the_llm_sees_images_and_documents_and_the_web_stream_shows_it_typing(
    stack: Stack, http: aiohttp.ClientSession, api: FakeChannelApi, llm: FakeLlm
) -> None:
    channels = {**WHATSAPP_ENV, **TELEGRAM_ENV, **api.env()}
    gateway = await stack.start("gateway", **channels)
    await stack.start(
        "worker", **channels, REPLY_ENGINE="openai", OPENAI_BASE_URL=llm.url, OPENAI_API_KEY="sk-t", OPENAI_MODEL="v"
    )
    await wait_ready(stack)

    # A WhatsApp photo with its caption: an image_url content part holding the exact image.
    sender = "5511900000010"
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    api.add_media("wa-photo-1", png, "image/png")
    photo = {"id": "wa-photo-1", "mime_type": "image/png", "caption": "meu roteador está assim, e agora?"}
    await post_whatsapp(http, gateway, whatsapp_message("wamid.photo-1", sender, "image", photo))
    assert (await delivered(api, sender, 1))[0].text == LLM_TEXT
    user = llm.requests[0]["body"]["messages"][-1]
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": photo["caption"]},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        ],
    }

    # A Telegram PDF with a caption: its text is in the model's messages.
    chat = 700_100_010
    api.add_media("tg-pdf-2", tiny_pdf("Fatura 2026-11: total R$ 123,45"), "application/pdf")
    pdf = {"file_id": "tg-pdf-2", "file_unique_id": "p2", "file_name": "fatura.pdf", "mime_type": "application/pdf"}
    await post_telegram(http, gateway, telegram_media(910_000_040, chat, "document", pdf, caption="Está certo?"))
    assert (await delivered(api, chat, 1))[0].text == LLM_TEXT
    content = llm.requests[1]["body"]["messages"][-1]["content"]
    assert content.startswith("Está certo?") and "fatura.pdf" in content and "total R$ 123,45" in content
    # A damaged PDF: the polite reply, and the model is not asked.
    api.add_media("tg-pdf-3", b"%PDF-1.4 this is not really a PDF", "application/pdf")
    await post_telegram(http, gateway, telegram_media(910_000_041, chat, "document", {**pdf, "file_id": "tg-pdf-3"}))
    assert (await delivered(api, chat, 2))[1].text == polite["document_unreadable"]
    assert len(llm.requests) == 2

    # The web stream: the reply's text grows in `delta` events, then the `reply` event as before.
    conversation = f"web-stream-{uuid.uuid4().hex}"
    connected = asyncio.Event()
    token = await conversation_token(gateway.env["ATENDIMENTO_NAMESPACE"], "ana", conversation)
    events = asyncio.create_task(all_events(http, gateway.url, conversation, token, connected))
    await asyncio.wait_for(connected.wait(), 10)
    status, body = await post_message(http, gateway, {"user_id": "ana", "conversation_id": conversation, "text": PRAZO})
    assert status == 202, body
    seen = await events
    deltas = [data["text"] for kind, data in seen if kind == "delta"]
    assert len(deltas) >= 2 and deltas[-1] == LLM_TEXT
    assert all(LLM_TEXT.startswith(text) for text in deltas)  # each is the text so far
    assert seen[-1][0] == "reply" and seen[-1][1]["reply"]["text"] == LLM_TEXT
    assert set(seen[-1][1]) == {"message_id", "conversation_id", "status", "reply", "latency_ms", "conversation_token"}
    assert seen[-1][1]["conversation_id"] == conversation  # the caller's own id, as in every answer


async def all_events(
    http: aiohttp.ClientSession, base: str, conversation_id: str, token: str, connected: asyncio.Event
) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the stream up to and including the first `reply`."""
    seen: list[tuple[str, dict[str, Any]]] = []
    url = f"{base}/v1/conversations/{conversation_id}/events"
    async with asyncio.timeout(20), http.get(url, headers={"X-Conversation-Token": token}) as response:
        async for event, data in sse_events(response, connected):
            seen.append((event, data))
            if event == "reply":
                return seen
    return seen


async def test_a_polite_reply_to_media_is_not_an_answer(
    stack: Stack, http: aiohttp.ClientSession, api: FakeChannelApi, redis: Redis
) -> None:
    """ "I cannot see images here" answers nothing (SPEC 6: `answer` is an entry's answer, with its
    id in `sources`): it is `smalltalk`, so the conversation is not counted as resolved by the bot
    (nor asked for a rating) for it; the caption's answer that follows is an `answer`."""
    channels = {**WHATSAPP_ENV, **api.env()}
    gateway = await stack.start("gateway", **channels)
    await stack.start("worker", **channels)
    await wait_ready(stack)
    sender, image = "5511900000007", {"id": "wa-image-7", "mime_type": "image/jpeg"}
    await post_whatsapp(http, gateway, whatsapp_message("wamid.img-7", sender, "image", image))
    assert (await delivered(api, sender, 1))[0].text == polite["image_not_read"]
    stored = await stored_reply(stack.namespace, "wamid.img-7")
    assert stored is not None
    reply = stored["reply"]
    assert (reply["kind"], reply["engine"], reply["sources"]) == ("smalltalk", "media", [])
    conversation = f"whatsapp:{PHONE_NUMBER_ID}:{sender}"
    state = orjson.loads(await redis.hget(Keys(Names(stack.namespace, TEST_SHARDS)).open, conversation) or "{}")
    assert state["n"] == 1 and "ans" not in state  # one reply so far, none an answer

    captioned = {**image, "caption": PRAZO}
    await post_whatsapp(http, gateway, whatsapp_message("wamid.img-8", sender, "image", captioned))
    assert (await delivered(api, sender, 2))[1].text == PRAZO_ANSWER
    stored = await stored_reply(stack.namespace, "wamid.img-8")
    assert stored is not None and stored["reply"]["kind"] == "answer"


@pytest.mark.parametrize(
    ("buttons", "problem"),
    [
        (["a", "b", "c", "d"], "'buttons' has 4 labels, at most 3 are allowed"),
        (["Um rótulo comprido demais"], "longer than 20 characters"),
        (["Sim", "Sim"], "the same label twice"),
        ("Sim", "'buttons' must be a list of non-empty strings"),
    ],
)
def test_a_knowledge_base_with_bad_buttons_names_the_entry_and_the_problem(buttons: Any, problem: str) -> None:
    entry = {"id": "pix", "questions": ["Aceitam Pix?"], "answer": "Sim.", "buttons": buttons}
    with pytest.raises(KnowledgeBaseError) as error:
        parse({"language": "pt", "fallback": "Não sei.", "entries": [entry]}, "kb.yaml")
    assert str(error.value).startswith("kb.yaml: entry 1 (id 'pix'): ") and problem in str(error.value)


def test_media_settings_are_validated_and_transcription_needs_a_key_or_a_url() -> None:
    assert not Settings.from_env({}).transcription_enabled
    assert Settings.from_env({"OPENAI_API_KEY": "sk-x"}).transcription_enabled
    local = Settings.from_env({"TRANSCRIPTION_BASE_URL": "http://whisper:8000/v1", "VOICE_REPLIES": "on"})
    assert local.transcription_enabled and local.voice_replies and local.audio_base_url == "http://whisper:8000/v1"
    for name, value in (("VOICE_REPLIES", "yes"), ("MEDIA_MAX_BYTES", "-1"), ("TRANSCRIPTION_BASE_URL", "whisper")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


async def test_a_long_spoken_reply_is_read_whole_not_cut_at_its_first_chunk() -> None:
    """`/audio/speech` streams its audio: a reply of a minute is hundreds of kilobytes in many
    chunks, and the voice note sent is all of it (a read of what was buffered first kept 32 KiB)."""
    audio = SPEECH_AUDIO + bytes(range(256)) * 2000  # about 500 KiB

    async def speech(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/ogg"})
        await response.prepare(request)
        for start in range(0, len(audio), 32 * 1024):
            await response.write(audio[start : start + 32 * 1024])
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = SpeechConfig(f"http://127.0.0.1:{port}/v1", "", "whisper-1", "tts-1", "alloy", 10.0, 0)
    try:
        async with aiohttp.ClientSession() as session:
            assert await synthesise(session, config, "Entregamos em até 5 dias úteis.") == audio
    finally:
        await runner.cleanup()


async def test_a_file_that_is_no_image_gets_the_polite_reply_and_never_reaches_the_llm(api: FakeChannelApi) -> None:
    """An "image" whose bytes are none of the formats the LLM reads (damaged, or a file of another
    kind sent as a photo) is an unreadable file (SPEC 4): the polite reply, not a provider error
    that falls back to the base's "I did not find that" and counts against the LLM's breaker."""
    settings = Settings.from_env({**WHATSAPP_ENV, **api.env()})
    resolver = MediaResolver(settings, "pt", reads_media=True)
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    webp = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(64)
    api.add_media("wa-png", png, "image/png")
    api.add_media("wa-webp", webp, "image/webp")
    api.add_media("wa-not-an-image", b"<html>this is no image</html>", "image/jpeg")

    def photo(media_id: str) -> InboundMessage:
        attachment = Attachment(kind="image", media_id=media_id, mime_type="image/jpeg")
        return wa_attached(f"wamid.{media_id}", "5511900000011", attachment)

    try:
        good = await resolver.resolve([photo("wa-png")])
        assert good.unhandled is None and good.images == ("data:image/png;base64," + base64.b64encode(png).decode(),)
        good = await resolver.resolve([photo("wa-webp")])
        assert good.unhandled is None and good.images[0].startswith("data:image/webp;base64,")
        bad = await resolver.resolve([photo("wa-not-an-image")])
        assert bad.images == () and bad.unhandled is not None and bad.unhandled.text == polite["unavailable"]
    finally:
        await resolver.close()


async def test_a_question_typed_with_media_that_cannot_be_read_is_still_answered(api: FakeChannelApi) -> None:
    """DEBOUNCE_MS: a photo (the knowledge base reads none) and the question typed right after it
    are one unit. The question is answered, as a photo's caption is; the polite "cannot see
    images, could you type your question?" is for media with nothing else to answer."""
    settings = Settings.from_env({**WHATSAPP_ENV, **api.env()})
    resolver = MediaResolver(settings, "pt", reads_media=False)
    sender = "5511900000012"
    base = wa_attached(
        "wamid.burst-1", sender, Attachment(kind="image", media_id="wa-photo-12", mime_type="image/jpeg")
    )
    typed = wa_attached("wamid.burst-2", sender, None, text=PRAZO)
    try:
        both = await resolver.resolve([base, typed])
        assert both.unhandled is None and both.text == PRAZO
        alone = await resolver.resolve([base])
        assert alone.unhandled is not None and alone.unhandled.text == polite["image_not_read"]
    finally:
        await resolver.close()


async def test_a_size_the_graph_api_declares_as_a_string_is_enforced_before_downloading(api: FakeChannelApi) -> None:
    """The Graph API's media info gives `file_size` as a string of digits: a file declared over
    MEDIA_MAX_BYTES that way is refused before a byte of it is downloaded, as a numeric one is."""
    env = {**WHATSAPP_ENV, **api.env(), "TRANSCRIPTION_BASE_URL": "http://127.0.0.1:9/v1"}
    resolver = MediaResolver(
        Settings.from_env({**env, "MEDIA_MAX_BYTES": str(MEDIA_MAX_BYTES)}), "pt", reads_media=True
    )
    api.add_media("wa-big-3", bytes(MEDIA_MAX_BYTES + 1), "audio/ogg", declared_size=str(MEDIA_MAX_BYTES + 1))
    attachment = Attachment(kind="audio", media_id="wa-big-3", mime_type="audio/ogg", voice=True)
    voice = wa_attached("wamid.big-3", "5511900000013", attachment)
    try:
        resolved = await resolver.resolve([voice])
    finally:
        await resolver.close()
    assert resolved.unhandled is not None and resolved.unhandled.text == polite["too_large"]
    assert api.media["wa-big-3"].fetches == 0


async def test_a_telegram_voice_note_named_oga_is_audio_where_the_machine_has_no_mime_types(
    api: FakeChannelApi, llm: FakeLlm, voice_note: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telegram serves every file as octet-stream and may leave a voice note's `mime_type` out: its
    name (`voice/file_12.oga`) says it is audio. A slim container image has no /etc/mime.types,
    and Python's own table knows no `.oga`: that voice note was "a kind of file I cannot open"."""
    env = {**TELEGRAM_ENV, **api.env(), "TRANSCRIPTION_BASE_URL": llm.url}
    resolver = MediaResolver(Settings.from_env(env), "pt", reads_media=True)
    api.add_media("tg-voice-oga", voice_note, "audio/ogg", file_path="voice/file_12.oga")
    chat = 700_100_012
    voice = InboundMessage(
        message_id=f"telegram:{chat}:1",
        conversation_id=f"telegram:{chat}",
        user_id=str(chat),
        text="",
        channel="telegram",
        metadata={"chat_id": chat},
        attachment=Attachment(kind="audio", media_id="tg-voice-oga", mime_type="", voice=True),
    )
    bare = mimetypes.MimeTypes()  # Python's own table: all such an image knows
    monkeypatch.setattr(mimetypes, "guess_type", bare.guess_type)
    monkeypatch.setattr(mimetypes, "guess_extension", bare.guess_extension)
    try:
        resolved = await resolver.resolve([voice])
    finally:
        await resolver.close()
    assert resolved.unhandled is None and resolved.text == PRAZO and resolved.voice
    [transcription] = llm.transcriptions
    assert transcription["file"] == voice_note and transcription["filename"].endswith(".ogg")
