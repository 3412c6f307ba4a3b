"""Outbound delivery (SPEC 4): retries with backoff honouring Retry-After, splitting, per-recipient
pacing, dead letters counted as errors, and one delivery per reply, also across a consumer killed
mid-send. Replies are published to the replies exchange as the worker publishes them; the
gateway's delivery consumers send them to a local stand-in of the channels' APIs."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from services.gateway.delivery import order
from services.gateway.delivery.ledger import Lease, Ledger
from services.gateway.delivery.split import split_text, units
from shared.names import Names
from tests.support import TEST_SHARDS, Service, Stack, eventually, get_json, new_namespace
from tests.support.channel_fakes import (
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    Answer,
    FakeChannelApi,
    Hold,
    kb_answer,
    whatsapp_text,
)
from tests.support.channel_fakes import post_whatsapp as send_whatsapp
from tests.support.fake_llm import FakeLlm
from tests.support.pipeline import wait_ready
from tests.support.replies import Replies, reply

CHANNELS_ENV = {**WHATSAPP_ENV, **TELEGRAM_ENV, "DELIVERY_MAX_ATTEMPTS": "3", "DELIVERY_TIMEOUT_SECONDS": "2"}
SENTENCE = "Esta é uma frase de exemplo para a resposta longa, com algumas palavras a mais. "


async def delivered(api: FakeChannelApi, recipient: str | int, count: int) -> list[str]:
    async def arrived() -> list[str] | None:
        texts = [r.text for r in api.delivered_to(recipient)]
        return texts if len(texts) >= count else None

    return await eventually(arrived, what=f"{count} deliveries to {recipient}")


@pytest.fixture
async def monitor(stack: Stack, api: FakeChannelApi) -> Service:
    """One gateway with both channels, and a monitor (for the dead letters)."""
    await stack.start("gateway", **CHANNELS_ENV, **api.env())
    monitor = await stack.start("monitor")
    await wait_ready(stack)
    return monitor


@pytest.fixture
async def replies(stack: Stack, monitor: Service) -> AsyncIterator[Replies]:
    async with Replies(stack.namespace) as replies:
        yield replies


async def test_retries_honour_retry_after(replies: Replies, api: FakeChannelApi) -> None:
    # WhatsApp: 500, then 429 with a Retry-After header, then the normal 200.
    api.script[:] = [Answer(500), Answer(429, {"Retry-After": "1"})]
    await replies.publish(reply("whatsapp", "5511900000001", "Olá! Seu pedido saiu para entrega."))
    [text] = await delivered(api, "5511900000001", 1)
    attempts = [r for r in api.received if r.body.get("to") == "5511900000001"]
    assert [r.status for r in attempts] == [500, 429, 200]
    assert {r.text for r in attempts} == {text}
    assert attempts[2].at - attempts[1].at >= 1.0  # the platform's wait was honoured

    # Telegram says how long to wait in its body (`parameters.retry_after`).
    too_many = {"ok": False, "error_code": 429, "description": "Too Many Requests", "parameters": {"retry_after": 1}}
    api.script[:] = [Answer(429, body=too_many)]
    await replies.publish(reply("telegram", 700_100_001, "Seu pedido saiu para entrega."))
    await delivered(api, 700_100_001, 1)
    attempts = [r for r in api.received if r.body.get("chat_id") == 700_100_001]
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 1.0


async def test_long_reply_is_split_at_sentences_and_paced(replies: Replies, api: FakeChannelApi) -> None:
    long_text = (SENTENCE * 250).strip()  # about 20,000 characters: five messages of at most 4096
    await replies.publish(reply("telegram", 700_100_002, long_text))
    parts = await delivered(api, 700_100_002, 5)
    assert len(parts) == 5
    assert all(units(part) <= 4096 for part in parts)
    assert all(part.endswith(".") for part in parts)  # every cut at the end of a sentence
    assert re.sub(r"\s+", " ", " ".join(parts)) == long_text
    # Telegram chats get about one message per second after a burst of three.
    times = [r.at for r in api.delivered_to(700_100_002)]
    assert times[4] - times[0] >= 1.5


async def test_a_repeated_reply_goes_out_once(replies: Replies, api: FakeChannelApi) -> None:
    # The worker re-publishes a stored reply when a message is redelivered after its crash.
    first = reply("whatsapp", "5511900000003", "Primeira resposta.")
    await replies.publish(first)
    await replies.publish(first)
    await replies.publish(reply("whatsapp", "5511900000003", "Segunda resposta."))
    texts = await delivered(api, "5511900000003", 2)
    assert texts == ["Primeira resposta.", "Segunda resposta."]


async def test_what_keeps_failing_is_dead_lettered(
    replies: Replies, api: FakeChannelApi, monitor: Service, http: aiohttp.ClientSession
) -> None:
    async def dead_letters(count: int) -> bool:
        return await replies.dead_letters() == count

    # One at a time: the fake API's scripted answers go to whichever request comes first.
    invalid = {"error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100}}
    api.script[:] = [Answer(400, body=invalid)]  # permanent: not retried
    await replies.publish(reply("whatsapp", "5511900000004", "Não vai."))
    await eventually(lambda: dead_letters(1), what="the rejected reply dead-lettered")
    api.script[:] = [Answer(502), Answer(503), Answer(500)]  # DELIVERY_MAX_ATTEMPTS=3, all spent
    await replies.publish(reply("whatsapp", "5511900000005", "Também não vai."))
    await eventually(lambda: dead_letters(2), what="the failing reply dead-lettered")
    await replies.publish(dataclasses.replace(reply("telegram", 0, "Sem destinatário."), metadata={}))
    await eventually(lambda: dead_letters(3), what="the unaddressed reply dead-lettered")

    async def visible() -> bool:
        status, stats = await get_json(http, f"{monitor.url}/monitoring/stats")
        errors, queue = stats["errors"]["by_kind_5_minutes"], stats["queue"]
        return status == 200 and errors.get("delivery") == 3 and queue["dead_letters"] == 3

    await eventually(visible, what="the monitor showing three dead letters and three delivery errors")
    assert [r.status for r in api.received if r.body.get("to") == "5511900000004"] == [400]
    assert [r.status for r in api.received if r.body.get("to") == "5511900000005"] == [502, 503, 500]
    assert api.delivered_to("5511900000004") == api.delivered_to("5511900000005") == []


async def test_consumer_killed_mid_send_delivers_once(stack: Stack, api: FakeChannelApi) -> None:
    """Part one of two is confirmed, part two is on the wire when its gateway is killed: another
    gateway takes the redelivered reply over once the dead one's lease runs out, sends part two,
    and never part one again."""
    first = await stack.start("gateway", **CHANNELS_ENV, **api.env())
    await wait_ready(stack)
    hold = Hold()
    api.script[:] = [Answer(200), hold]
    text = (SENTENCE * 60).strip()  # about 4,900 characters: two parts
    async with Replies(stack.namespace) as replies:
        await replies.publish(reply("whatsapp", "5511900000006", text))
        await eventually(lambda: _is_set(hold), what="part two on the wire")
        first.kill()
        await stack.start("gateway", **CHANNELS_ENV, **api.env())
        parts = await delivered(api, "5511900000006", 2)
    assert re.sub(r"\s+", " ", " ".join(parts)) == text
    sent = [r for r in api.received if r.body.get("to") == "5511900000006"]
    assert [r.status for r in sent] == [200, None, 200]  # part two's first try never came back
    assert [r.text for r in sent] == [parts[0], parts[1], parts[1]]


async def _is_set(hold: Hold) -> bool:
    return hold.arrived.is_set()


def test_split_prefers_paragraphs_then_sentences_then_words() -> None:
    assert split_text("  Curta.  ", 10) == ["Curta."]
    assert split_text("", 10) == []
    # Two paragraphs that do not fit together: cut between them, not inside a sentence.
    assert split_text("Um dois. Três quatro.\n\nCinco seis.", 25) == ["Um dois. Três quatro.", "Cinco seis."]
    # A paragraph too long: cut at sentence ends, each part as full as the limit allows.
    assert split_text("Aaa bbb. Ccc ddd! Eee fff? Ggg.", 18) == ["Aaa bbb. Ccc ddd!", "Eee fff? Ggg."]
    # A sentence too long: cut between words; a word too long: cut where it stands.
    assert split_text("palavra " * 4, 16) == ["palavra palavra", "palavra palavra"]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    # Emoji take two UTF-16 units (Telegram's count): never over the limit in those units.
    parts = split_text("😀" * 9, 8)
    assert all(units(part) <= 8 for part in parts) and "".join(parts) == "😀" * 9


def test_a_long_list_is_split_between_its_lines_never_inside_an_item() -> None:
    """A numbered list longer than a message, in one paragraph (lines, no blank line): each part
    ends at the end of a line, so no part ends with an item's number and the next begins with its text."""
    lines = [f"{i}. Produto número {i}: entrega em até {i % 7 + 1} dias úteis nas capitais." for i in range(1, 90)]
    text = "Veja a lista:\n" + "\n".join(lines)
    parts = split_text(text, 4096)
    assert len(parts) == 2 and all(units(part) <= 4096 for part in parts)
    assert "\n".join(parts) == text  # every cut at a line break: each item whole in one part


async def test_replies_to_one_recipient_leave_in_order_across_gateways(
    stack: Stack, http: aiohttp.ClientSession, api: FakeChannelApi
) -> None:
    """Two gateways deliver; each chat's first reply fails once (retried after a back-off) while
    the second may sit on the other gateway: it still waits for the first."""
    for _ in range(2):
        await stack.start("gateway", **CHANNELS_ENV, **api.env())
    await stack.start("worker")
    await wait_ready(stack)
    # An odd number: the broker alternates between the two gateways, so a chat's two replies
    # (5 apart in the queue) land on different ones.
    chats = [f"55119000077{i:02d}" for i in range(5)]
    api.script[:] = [Answer(500)] * len(chats)
    for question in ("Qual o prazo de entrega?", "Quanto custa o frete?"):
        for chat in chats:
            status, _ = await post_whatsapp(stack.of("gateway")[0], http, chat, question)
            assert status == 200
    expected = [kb_answer("prazo-entrega"), kb_answer("frete")]
    for chat in chats:
        assert await delivered(api, chat, 2) == expected, chat
    assert sum(r.status == 500 for r in api.received) == len(chats)


async def post_whatsapp(gateway: Service, http: aiohttp.ClientSession, sender: str, text: str) -> tuple[int, Any]:
    payload = whatsapp_text(f"wamid.order-{uuid.uuid4().hex}", sender, text)
    return await send_whatsapp(http, gateway, payload)


async def test_a_reply_waits_for_an_earlier_one_that_is_still_being_retried(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversation's head reply is on another gateway, retrying (a 429's Retry-After, its
    back-offs): its lease is renewed all along, so the next reply keeps waiting past MAX_WAIT_S
    (meant for a head nobody holds) and goes out only once the head settles."""
    monkeypatch.setattr(order, "MAX_WAIT_S", 0.2)
    names = Names(new_namespace(), TEST_SHARDS)
    ledger, outbound = Ledger(redis, names), order.OutboundOrder(redis, names)
    conversation, first, second = "whatsapp:1:5511900000099", "wamid.first", "wamid.second"
    keys = [names.outbound_order_key(conversation), names.delivered_key(first)]
    await redis.rpush(keys[0], first, second)
    try:
        assert await ledger.acquire(first, "other-gateway", lease_s=1.0) == Lease(sent=0)
        waiting = asyncio.create_task(outbound.wait_turn(conversation, second))
        # The first one's retries, each renewing its lease: time passing is the point (the waits
        # add up to more than four times MAX_WAIT_S), so this sleeps rather than polls.
        for _ in range(3):
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the second reply went out before the first"
            assert await ledger.renew(first, "other-gateway", 1.0, 0)
        await ledger.finish(first, "other-gateway")
        await outbound.settled(conversation, first)
        await asyncio.wait_for(waiting, 2)
        # A head nobody holds (its entry lost) still delays the next one by MAX_WAIT_S only.
        await redis.rpush(keys[0], "wamid.lost", "wamid.third")
        await asyncio.wait_for(outbound.wait_turn(conversation, "wamid.third"), 2)
    finally:
        await redis.delete(*keys)


async def test_a_voice_note_the_platform_refuses_leaves_the_text_reply_delivered(
    stack: Stack, api: FakeChannelApi, llm: FakeLlm
) -> None:
    """VOICE_REPLIES=on: the answer's text went out, then the platform refuses its voice note for
    good (a customer who accepts no voice messages, a format refused): the customer has the
    answer, as when speech cannot be synthesised. The reply is delivered, not dead-lettered and
    counted as an error, and the conversation's next reply follows."""
    await stack.start("gateway", **CHANNELS_ENV, **api.env(), VOICE_REPLIES="on", TRANSCRIPTION_BASE_URL=llm.url)
    await wait_ready(stack)
    refused = {"error": {"message": "(#131053) Media upload error", "type": "OAuthException", "code": 131053}}
    api.script[:] = [Answer(200), Answer(400, body=refused)]
    sender = "5511900000008"
    first = reply("whatsapp", sender, "Entregamos em até 5 dias úteis.")
    first = dataclasses.replace(first, reply=dataclasses.replace(first.reply, voice=True))
    async with Replies(stack.namespace) as replies:
        await replies.publish(first)
        await replies.publish(reply("whatsapp", sender, "Algo mais?"))
        assert await delivered(api, sender, 2) == ["Entregamos em até 5 dias úteis.", "Algo mais?"]
        assert [r.status for r in api.received if r.body.get("to") == sender] == [200, 400, 200]
        assert await replies.dead_letters() == 0
