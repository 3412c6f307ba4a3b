"""Media a customer sent (SPEC 4 "Media"), turned into what a reply engine reads.

One entry point, `MediaResolver.resolve(messages)`, called by the processor right before the
engine: a voice note becomes its transcript (`POST /audio/transcriptions`), an image a data: URL
for the LLM (its caption the text), a PDF its text; the messages come back with their text as
understood (a transcript marked as a voice note), which is what memory, the conversation log and
the stats keep. What cannot be handled (no transcription configured, an image or document for the
knowledge-base engine, a file over MEDIA_MAX_BYTES or of the wrong type, a download or
transcription that fails) becomes `unhandled`: a short polite reply given instead of the engine's,
committed like any reply, so there is never silence nor an error loop. The bytes are dropped when
the reply is generated; they are never logged, queued or stored.

Hostile media stays within bounds: files come only from where the platform serves them
(fetch.py, hosts.py), a PDF is read in a child process with its own memory and CPU limits
(documents.py), and at most MEDIA_CONCURRENCY media messages are handled at once per worker.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from services.worker.engines.base import Document
from services.worker.engines.languages import ReplyLanguage, customer_language
from services.worker.engines.text import Language
from shared.messages import Attachment, InboundMessage, ReplyContent
from shared.settings import Settings
from shared.speech import SpeechConfig, SpeechError, transcribe
from shared.telemetry import client_trace_config

from .documents import TooLargeDocument, Unreadable, limits_of, pdf_text
from .fetch import FILE_TYPES, MediaError, MediaFetcher, type_by_name
from .hosts import MediaHosts, download_session

log = logging.getLogger(__name__)

# How the conversation log and memory mark what came as media.
VOICE_MARK = "🎤"
IMAGE_MARK = "🖼️"
DOCUMENT_MARK = "📄"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
AUDIO_TYPES = frozenset({"application/ogg", "video/ogg", "video/mp4", "video/webm"})  # and audio/*
PDF = "application/pdf"

POLITE: dict[ReplyLanguage, dict[str, str]] = {
    "pt": {
        "no_transcription": "Desculpe, por aqui ainda não consigo ouvir mensagens de voz. Pode escrever sua pergunta?",
        "audio_failed": "Desculpe, não consegui entender o áudio. Pode escrever sua pergunta?",
        "too_large": "Desculpe, esse arquivo é grande demais para eu abrir. Pode escrever sua pergunta?",
        "unavailable": "Desculpe, não consegui abrir esse arquivo. Pode escrever sua pergunta?",
        "wrong_type": "Desculpe, não consigo abrir esse tipo de arquivo. Pode escrever sua pergunta?",
        "image_not_read": "Desculpe, por aqui não consigo ver imagens. Pode descrever por escrito o que precisa?",
        "document_not_read": "Desculpe, só consigo ler documentos em PDF. Pode escrever sua pergunta?",
        "document_unreadable": "Desculpe, não consegui ler esse documento. Pode escrever sua pergunta?",
        "documents_not_read": "Desculpe, por aqui não consigo ler documentos. Pode escrever sua pergunta?",
    },
    "en": {
        "no_transcription": "Sorry, I cannot listen to voice messages here yet. Could you type your question?",
        "audio_failed": "Sorry, I could not make out the audio. Could you type your question?",
        "too_large": "Sorry, that file is too large for me to open. Could you type your question?",
        "unavailable": "Sorry, I could not open that file. Could you type your question?",
        "wrong_type": "Sorry, I cannot open that kind of file. Could you type your question?",
        "image_not_read": "Sorry, I cannot see images here. Could you describe in writing what you need?",
        "document_not_read": "Sorry, I can only read PDF documents. Could you type your question?",
        "document_unreadable": "Sorry, I could not read that document. Could you type your question?",
        "documents_not_read": "Sorry, I cannot read documents here. Could you type your question?",
    },
    "es": {
        "no_transcription": "Lo siento, aquí todavía no puedo escuchar mensajes de voz. ¿Puedes escribir tu pregunta?",
        "audio_failed": "Lo siento, no pude entender el audio. ¿Puedes escribir tu pregunta?",
        "too_large": "Lo siento, ese archivo es demasiado grande para abrirlo. ¿Puedes escribir tu pregunta?",
        "unavailable": "Lo siento, no pude abrir ese archivo. ¿Puedes escribir tu pregunta?",
        "wrong_type": "Lo siento, no puedo abrir ese tipo de archivo. ¿Puedes escribir tu pregunta?",
        "image_not_read": "Lo siento, aquí no puedo ver imágenes. ¿Puedes describir por escrito lo que necesitas?",
        "document_not_read": "Lo siento, solo puedo leer documentos PDF. ¿Puedes escribir tu pregunta?",
        "document_unreadable": "Lo siento, no pude leer ese documento. ¿Puedes escribir tu pregunta?",
        "documents_not_read": "Lo siento, aquí no puedo leer documentos. ¿Puedes escribir tu pregunta?",
    },
}


@dataclass(frozen=True, slots=True)
class ResolvedInput:
    # The unit's messages as understood (a voice note's text is its marked transcript): what the
    # commit stores in memory and the conversation log.
    messages: tuple[InboundMessage, ...]
    # What the engine answers: the texts, transcripts and captions, unmarked.
    text: str
    images: tuple[str, ...] = ()
    documents: tuple[Document, ...] = ()
    # The polite reply given instead of the engine's, when some media could not be handled.
    unhandled: ReplyContent | None = None
    # A voice message is among them, understood: the reply says so (`voice`), for VOICE_REPLIES.
    voice: bool = False

    @property
    def memory_text(self) -> str:
        return "\n".join(message.text for message in self.messages)


@dataclass(frozen=True, slots=True)
class _Understood:
    message: InboundMessage
    text: str
    image: str | None = None
    document: Document | None = None
    problem: str | None = None


def _combined(understood: Sequence[_Understood]) -> ResolvedInput:
    """The unit's messages as understood, with what the engine reads of them."""
    return ResolvedInput(
        messages=tuple(u.message for u in understood),
        text="\n".join(u.text for u in understood if u.text),
        images=tuple(u.image for u in understood if u.image),
        documents=tuple(u.document for u in understood if u.document),
    )


def _is_voice(message: InboundMessage) -> bool:
    return message.attachment is not None and message.attachment.kind == "audio"


class MediaResolver:
    """`reads_media`: the engine reads images and documents (the LLM); the knowledge base does not."""

    def __init__(self, settings: Settings, language: Language, *, reads_media: bool) -> None:
        self._settings = settings
        self._language = language
        self._reads_media = reads_media
        self._speech = SpeechConfig.from_settings(settings)
        self._hosts = MediaHosts.from_settings(settings)
        self._slots = asyncio.Semaphore(settings.media_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._downloads: aiohttp.ClientSession | None = None

    async def resolve(self, messages: Sequence[InboundMessage]) -> ResolvedInput:
        if all(message.attachment is None for message in messages):  # the common case: text only
            return ResolvedInput(tuple(messages), "\n".join(message.text for message in messages))
        understood = [await self._understand(message) for message in messages]
        problem = next((u.problem for u in understood if u.problem), None)
        combined = _combined(understood)
        # Something else of the unit to answer (a question typed with a photo, DEBOUNCE_MS): it is
        # answered, as a caption is; the polite reply is for media with nothing else to answer.
        answerable = bool(combined.text.strip() or combined.images or combined.documents)
        if problem is not None and not answerable:  # the polite reply, in the customer's language
            last = messages[-1]
            polite = POLITE[customer_language(last.metadata, last.text) or self._language]
            # `smalltalk`, not an `answer`: nothing was answered (the conversation is not counted as
            # resolved by the bot, nor asked for a rating, for it).
            unhandled = ReplyContent(polite[problem], "media", 1.0, kind="smalltalk")
            return dataclasses.replace(combined, unhandled=unhandled)
        voice = any(_is_voice(u.message) and u.problem is None for u in understood)
        return dataclasses.replace(combined, voice=voice)

    async def close(self) -> None:
        for session in (self._session, self._downloads):
            if session is not None:
                await session.close()

    async def _understand(self, message: InboundMessage) -> _Understood:
        attachment = message.attachment
        caption = message.text.strip()
        if attachment is None:
            return _Understood(message, caption)
        try:
            async with self._slots:  # MEDIA_CONCURRENCY: files in memory and PDF readers at once
                if attachment.kind == "audio":
                    return await self._audio(message, attachment)
                if attachment.kind == "image":
                    return await self._image(message, attachment, caption)
                return await self._document(message, attachment, caption)
        except MediaError as exc:
            problem, detail = exc.reason, str(exc)
        except SpeechError as exc:
            problem, detail = "audio_failed", str(exc)
        except Unreadable as exc:
            problem, detail = "document_unreadable", str(exc)
        except TooLargeDocument as exc:
            problem, detail = "too_large", str(exc)
        log.warning(
            "media of message %s not handled (%s): %s",
            message.message_id,
            problem,
            detail,
            extra={"channel": message.channel, "media": attachment.kind},
        )
        return _Understood(message, "", problem=problem)

    async def _audio(self, message: InboundMessage, attachment: Attachment) -> _Understood:
        if not self._settings.transcription_enabled:
            raise MediaError("no_transcription", "no transcription configured (OPENAI_API_KEY, TRANSCRIPTION_BASE_URL)")
        fetched = await self._fetcher().fetch(message, attachment)
        if not (fetched.mime_type.startswith("audio/") or fetched.mime_type in AUDIO_TYPES):
            raise MediaError("wrong_type", f"a voice message of type {fetched.mime_type!r}")
        transcript = await transcribe(
            self._client(), self._speech, fetched.data, _filename("voice", fetched.mime_type), fetched.mime_type
        )
        if not transcript:
            raise SpeechError("nothing was heard in the audio")
        return _Understood(dataclasses.replace(message, text=f"{VOICE_MARK} {transcript}"), transcript)

    async def _image(self, message: InboundMessage, attachment: Attachment, caption: str) -> _Understood:
        marked = dataclasses.replace(message, text=f"{IMAGE_MARK} {caption}".strip())
        if not self._reads_media:
            if caption:
                return _Understood(marked, caption)  # the knowledge base answers the caption alone
            raise MediaError("image_not_read", "the knowledge-base engine does not read images")
        fetched = await self._fetcher().fetch(message, attachment)
        if fetched.mime_type not in IMAGE_TYPES:
            raise MediaError("wrong_type", f"an image of type {fetched.mime_type!r}")
        # What the bytes are, not what they were called: a damaged file, or another kind sent as a
        # photo, is unreadable here (the provider would refuse it, as a failure of the LLM's).
        kind = image_type(fetched.data)
        if kind is None:
            raise MediaError("unavailable", f"an image served as {fetched.mime_type!r} is no image the LLM reads")
        data_url = f"data:{kind};base64,{base64.b64encode(fetched.data).decode()}"
        return _Understood(marked, caption, image=data_url)

    async def _document(self, message: InboundMessage, attachment: Attachment, caption: str) -> _Understood:
        name = attachment.filename or "documento.pdf"
        marked = dataclasses.replace(message, text=f"{DOCUMENT_MARK} {name} {caption}".strip())
        declared = attachment.mime_type.split(";")[0].strip().lower() or type_by_name(name)
        if declared != PDF:
            raise MediaError("document_not_read", f"a document of type {declared!r}")
        if not self._reads_media:
            if caption:
                return _Understood(marked, caption)
            raise MediaError("documents_not_read", "the knowledge-base engine does not read documents")
        fetched = await self._fetcher().fetch(message, attachment)
        if fetched.mime_type != PDF:
            raise MediaError("wrong_type", f"a document served as {fetched.mime_type!r}")
        text = await pdf_text(fetched.data, limits_of(self._settings), self._settings.media_timeout_s)
        return _Understood(marked, caption, document=Document(name, text))

    def _fetcher(self) -> MediaFetcher:
        if self._downloads is None or self._downloads.closed:
            self._downloads = download_session(self._hosts, trace_configs=[client_trace_config("media")])
        return MediaFetcher(self._downloads, self._settings, self._hosts)

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop the worker serves on.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trace_configs=[client_trace_config("media")])
        return self._session


def image_type(data: bytes) -> str | None:
    """The image format the bytes begin with (of IMAGE_TYPES, what the LLM reads), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def _filename(stem: str, mime_type: str) -> str:
    """A name whose extension tells the transcription server the format (OpenAI goes by it)."""
    extension = (
        {"audio/ogg": ".ogg", "audio/opus": ".ogg", "audio/mpeg": ".mp3", "audio/mp4": ".m4a"}.get(mime_type)
        or FILE_TYPES.guess_extension(mime_type)
        or ".ogg"
    )
    return stem + extension
