"""Telegram channel (SPEC 4): the webhook's secret token, text updates deduplicated by update_id,
private and group chats, replies out through a local stand-in of the Bot API."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from shared.messages import HANDOFF_OPTION, Option
from tests.support import Service, Stack, eventually, queued_inbound, stored_reply
from tests.support.channel_fakes import (
    TELEGRAM_ENV,
    FakeChannelApi,
    kb_answer,
    post_telegram,
    telegram_tap,
    telegram_text,
)
from tests.support.pipeline import wait_ready
from tests.support.replies import Replies, reply

PRAZO = "Qual o prazo de entrega?"
PRAZO_ANSWER = kb_answer("prazo-entrega")
TEXT_ONLY = "não consigo ler esse tipo de mensagem"


@pytest.fixture
async def bot_api() -> AsyncIterator[FakeChannelApi]:
    api = await FakeChannelApi().start()
    try:
        yield api
    finally:
        await api.close()


async def replies_to(bot_api: FakeChannelApi, chat_id: int, count: int) -> list[str]:
    async def arrived() -> list[str] | None:
        texts = [r.text for r in bot_api.delivered_to(chat_id)]
        return texts if len(texts) >= count else None

    return await eventually(arrived, what=f"{count} Telegram replies to chat {chat_id}")


@pytest.fixture
async def gateway(stack: Stack, bot_api: FakeChannelApi) -> Service:
    """A gateway with the Telegram channel and a worker; each test uses chats of its own."""
    await stack.start("gateway", **TELEGRAM_ENV, **bot_api.env())
    await stack.start("worker")
    await wait_ready(stack)
    return stack.gateway


async def test_secret_token_and_reply(gateway: Service, http: aiohttp.ClientSession, bot_api: FakeChannelApi) -> None:
    chat_id = 700_000_001
    update = telegram_text(900_000_001, chat_id, PRAZO)
    for secret in (None, "wrong-secret"):
        status, problem = await post_telegram(http, gateway, update, secret=secret)
        assert status == 401, problem
        assert problem["detail"].startswith("X-Telegram-Bot-Api-Secret-Token")
    assert bot_api.received == []

    status, body = await post_telegram(http, gateway, update)
    assert (status, body) == (200, {"accepted": 1, "duplicates": 0})
    [reply] = await replies_to(bot_api, chat_id, 1)
    [request] = bot_api.delivered_to(chat_id)
    assert request.path == f"/bot{TELEGRAM_ENV['TELEGRAM_BOT_TOKEN']}/sendMessage"
    assert request.body == {"chat_id": chat_id, "text": PRAZO_ANSWER}
    assert reply == PRAZO_ANSWER


async def test_same_update_three_times_gets_one_reply(
    gateway: Service, http: aiohttp.ClientSession, bot_api: FakeChannelApi
) -> None:
    one, two = 700_000_002, 700_000_003
    first = telegram_text(900_000_002, one, PRAZO)
    results = [await post_telegram(http, gateway, first) for _ in range(3)]
    concurrent = telegram_text(900_000_003, two, PRAZO)
    results += await asyncio.gather(*(post_telegram(http, gateway, concurrent) for _ in range(3)))
    assert all(status == 200 for status, _ in results), results
    assert sum(body["accepted"] for _, body in results) == 2
    assert sum(body["duplicates"] for _, body in results) == 4

    # A later update of each chat is answered after the first: once its reply is out, a second
    # reply to the repeated update could only have come before it.
    for update_id, chat_id in ((900_000_004, one), (900_000_005, two)):
        status, _ = await post_telegram(http, gateway, telegram_text(update_id, chat_id, "obrigado"))
        assert status == 200
    for chat_id in (one, two):
        replies = await replies_to(bot_api, chat_id, 2)
        assert replies[0] == PRAZO_ANSWER
        assert replies[1] != PRAZO_ANSWER
        assert len(bot_api.delivered_to(chat_id)) == 2


async def test_group_chat_is_one_conversation(
    gateway: Service, http: aiohttp.ClientSession, bot_api: FakeChannelApi
) -> None:
    group = -1_001_234_567_890
    for update_id, user_id in ((900_000_010, 11), (900_000_011, 12)):
        update = telegram_text(update_id, group, PRAZO, user_id=user_id, chat_type="supergroup")
        status, _ = await post_telegram(http, gateway, update)
        assert status == 200
    replies = await replies_to(bot_api, group, 2)
    assert replies == [PRAZO_ANSWER, PRAZO_ANSWER]
    for update_id in (900_000_010, 900_000_011):
        stored = await stored_reply(gateway.env["ATENDIMENTO_NAMESPACE"], f"telegram:{update_id}")
        assert stored is not None and stored["conversation_id"] == f"telegram:{group}"


async def test_other_updates_are_acknowledged(
    gateway: Service, http: aiohttp.ClientSession, bot_api: FakeChannelApi
) -> None:
    private, group = 700_000_020, -1_009_999_000_001
    sticker: dict[str, Any] = telegram_text(900_000_020, private, "")
    del sticker["message"]["text"]
    sticker["message"]["sticker"] = {"file_id": "CAACAgIAAxkBAAIB", "file_unique_id": "AQAD", "type": "regular"}
    group_photo: dict[str, Any] = telegram_text(900_000_021, group, "", chat_type="group")
    del group_photo["message"]["text"]
    group_photo["message"]["sticker"] = {"file_id": "CAACAgIAAxkBAAIC", "file_unique_id": "AgAD", "type": "regular"}
    edited = {"update_id": 900_000_022, "edited_message": telegram_text(0, private, PRAZO)["message"]}
    for update in (sticker, group_photo, edited):
        status, body = await post_telegram(http, gateway, update)
        assert status == 200, body
    status, problem = await post_telegram(http, gateway, {"update_id": "x"})
    assert status == 400
    assert problem["detail"].startswith("update_id")

    # The group's sticker and the edit get nothing; the private sticker gets the polite reply, and
    # the next text message is answered after it (so nothing else is still on its way).
    status, _ = await post_telegram(http, gateway, telegram_text(900_000_023, private, PRAZO))
    assert status == 200
    replies = await replies_to(bot_api, private, 2)
    assert TEXT_ONLY in replies[0]
    assert replies[1] == PRAZO_ANSWER
    assert bot_api.delivered_to(group) == []


# A question back: candidate entries (id and title), one with a long title, and the hand-over.
CANDIDATES = (
    Option("prazo-entrega", "Prazo de entrega"),
    Option("prazo-interior", "Quanto tempo demora a entrega para o interior do estado?"),
    Option("frete", "Valor do frete"),
    Option(HANDOFF_OPTION, "Falar com atendente"),
)


async def test_options_go_out_as_an_inline_keyboard_and_taps_come_back_as_options(
    stack: Stack, http: aiohttp.ClientSession, bot_api: FakeChannelApi
) -> None:
    """A reply with options, published as the worker publishes it, leaves through the gateway's
    real Bot API client as one inline button a row, each carrying the option's id; taps reach the
    queue (no worker: read as is) with that id, their text the button's label when the update shows
    the keyboard, else the id, and each is answered with answerCallbackQuery."""
    await stack.start("gateway", **TELEGRAM_ENV, **bot_api.env())
    await wait_ready(stack)
    chat = 700_200_001
    message = reply("telegram", chat, "Você quis dizer...?")
    content = dataclasses.replace(message.reply, kind="clarify", options=CANDIDATES)
    async with Replies(stack.namespace) as replies:
        await replies.publish(dataclasses.replace(message, reply=content))

        async def sent_one() -> bool:
            return len(bot_api.delivered_to(chat)) == 1

        await eventually(sent_one, what="the reply with options")
    [sent] = bot_api.delivered_to(chat)
    assert sent.body == {
        "chat_id": chat,
        "text": "Você quis dizer...?",
        "reply_markup": {"inline_keyboard": [[{"text": o.label, "callback_data": o.id}] for o in CANDIDATES]},
    }

    taps = [
        telegram_tap(920_000_001, chat, "prazo-interior", keyboard=sent.options),
        telegram_tap(920_000_002, chat, HANDOFF_OPTION),  # the update does not show the keyboard
        telegram_tap(920_000_003, chat, "frete", keyboard=[("outra", "Outra coisa")]),  # a keyboard since changed
    ]
    for tap in taps:
        status, body = await post_telegram(http, stack.gateway, tap)
        assert (status, body) == (
            200,
            {
                "accepted": 1,
                "duplicates": 0,
                "method": "answerCallbackQuery",
                "callback_query_id": tap["callback_query"]["id"],
            },
        )
    queued = await queued_inbound(stack.namespace, 3)
    assert [(m.message_id, m.option, m.text) for m in queued] == [
        ("telegram:920000001", "prazo-interior", CANDIDATES[1].label),
        ("telegram:920000002", HANDOFF_OPTION, HANDOFF_OPTION),
        ("telegram:920000003", "frete", "frete"),
    ]
    assert {m.conversation_id for m in queued} == {f"telegram:{chat}"}

    # A keyboard that is not the Bot API's shape is refused, naming the field.
    bad = telegram_tap(920_000_004, chat, "frete", keyboard=sent.options)
    bad["callback_query"]["message"]["reply_markup"]["inline_keyboard"][1][0]["text"] = 7
    status, problem = await post_telegram(http, stack.gateway, bad)
    assert (status, problem["detail"]) == (
        400,
        "callback_query.message.reply_markup.inline_keyboard[1][0].text: must be a string",
    )
