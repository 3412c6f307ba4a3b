"""Issue 12, the web side: each attack performed against the running services, with API keys and
both channels configured, must fail (SPEC 4: conversations belong to their channel and user).

1. A web caller posting into `telegram:<chat_id>` / `whatsapp:...` reaches a web conversation of
   its own: the customer's memory and handoff stay untouched and the customer is still answered.
   Nor does another web `user_id` posting into a web conversation's id touch it.
2. Reading a conversation (events, message status) needs its token: foreign ones get 403; the
   token works on every gateway replica.
3. An id with a line break is refused (400); a reply's event is one JSON `data` line.
4. A web `message_id` equal to a Telegram update's internal id (or to a WhatsApp wamid) does not
   pre-empt that message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from services.gateway.handlers.sse import encode_event
from services.gateway.web_conversations import ConversationTokens
from shared.messages import ReplyContent, ReplyMessage
from shared.names import Names
from shared.settings import ConfigError, Settings
from tests.support import REDIS_URL, TEST_SHARDS, Service, Stack, eventually, web_id
from tests.support.channel_fakes import (
    PHONE_NUMBER_ID,
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    FakeChannelApi,
    kb_answer,
    post_telegram,
    post_whatsapp,
    telegram_text,
    whatsapp_text,
)
from tests.support.pipeline import wait_ready

KEY = "trust-key-0123456789abcdef"
PRAZO = "Qual o prazo de entrega?"
SECRETS = "Meu e-mail é vitima@example.com e minha senha: hunter2. Qual o prazo de entrega?"
ATTACKS = ("Repita minha mensagem anterior", "quero falar com um atendente", "/reset")


async def post(
    http: aiohttp.ClientSession, gateway: Service, body: dict[str, Any], wait: float = 10
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{gateway.url}/v1/messages", params={"wait": str(wait)}, json=body) as response:
        return response.status, await response.json(content_type=None)


async def status_of(http: aiohttp.ClientSession, url: str, **options: Any) -> int:
    async with asyncio.timeout(10), http.get(url, **options) as response:
        return response.status  # the body is not read: a stream opened by mistake never ends


@pytest.fixture
async def first(stack: Stack, api: FakeChannelApi) -> Service:
    """Two gateway replicas with API keys and both channels, and a worker: the first replica."""
    env = {**TELEGRAM_ENV, **WHATSAPP_ENV, **api.env(), "GATEWAY_API_KEYS": KEY}
    first = await stack.start("gateway", **env)
    await stack.start("gateway", **env)
    await stack.start("worker", MEMORY_TURNS="5")
    await wait_ready(stack)
    return first


@pytest.fixture
def second(stack: Stack, first: Service) -> Service:
    return stack.of("gateway")[1]


@pytest.fixture
def gateway(first: Service) -> Service:
    return first


@pytest.fixture
def names(stack: Stack) -> Names:
    return Names(stack.namespace, TEST_SHARDS)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A caller holding an API key (conftest's `http` holds none)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        yield session


async def _replies_to(api: FakeChannelApi, chat_id: int, count: int) -> list[str]:
    async def arrived() -> list[str] | None:
        texts = [r.text for r in api.delivered_to(chat_id)]
        return texts if len(texts) >= count else None

    return await eventually(arrived, what=f"{count} Telegram replies to chat {chat_id}")


async def test_channel_conversations_are_out_of_reach(
    http: aiohttp.ClientSession, gateway: Service, api: FakeChannelApi, redis: Redis, names: Names
) -> None:
    chat = 731_000_001
    assert (await post_telegram(http, gateway, telegram_text(931_000_001, chat, SECRETS)))[0] == 200
    await _replies_to(api, chat, 1)
    victim = f"telegram:{chat}"
    memory = await redis.lrange(names.memory_key(victim), 0, -1)
    assert any("hunter2" in turn for turn in memory)

    whatsapp = f"whatsapp:{PHONE_NUMBER_ID}:5511988887777"
    for conversation in (victim, whatsapp):
        for text in ATTACKS:
            body = {"user_id": str(chat), "conversation_id": conversation, "text": text}
            status, answer = await post(http, gateway, body)
            assert status in (200, 202), answer
            # The caller sees the id it sent, but it was a web conversation of that name all along.
            assert answer["conversation_id"] == conversation
            assert "hunter2" not in str(answer) and "vitima" not in str(answer)
            # Nor can the caller read the customer's messages: Telegram update ids are sequential.
            url = f"{gateway.url}/v1/messages/telegram:931000001"
            async with http.get(url, headers={"X-Conversation-Token": answer["conversation_token"]}) as response:
                assert response.status == 403, await response.text()  # as any unknown id
    assert await redis.lrange(names.memory_key(victim), 0, -1) == memory
    for conversation in (victim, whatsapp):
        assert not await redis.exists(names.handoff_key(conversation))
        assert conversation not in await redis.zrange(names.handoffs_key, 0, -1)
    # The customer is still the bot's to answer, and only the customer gets the replies.
    assert (await post_telegram(http, gateway, telegram_text(931_000_002, chat, PRAZO)))[0] == 200
    replies = await _replies_to(api, chat, 2)
    assert replies[1] == kb_answer("prazo-entrega")
    assert len(api.delivered_to(chat)) == 2


async def test_another_web_user_gets_a_conversation_of_its_own(
    http: aiohttp.ClientSession, gateway: Service, redis: Redis, names: Names
) -> None:
    mine = {"user_id": "ana", "conversation_id": "pedido-1"}
    status, first = await post(http, gateway, {**mine, "text": SECRETS})
    assert status == 200, first
    memory_key = names.memory_key(web_id("ana", "pedido-1"))
    memory = await redis.lrange(memory_key, 0, -1)
    assert memory
    for text in ATTACKS:
        status, answer = await post(http, gateway, {"user_id": "mallory", "conversation_id": "pedido-1", "text": text})
        assert status in (200, 202) and answer["conversation_token"] != first["conversation_token"]
        assert "hunter2" not in str(answer)
    assert await redis.lrange(memory_key, 0, -1) == memory
    assert not await redis.exists(names.handoff_key(web_id("ana", "pedido-1")))
    status, again = await post(http, gateway, {**mine, "text": PRAZO})
    assert status == 200 and again["reply"]["engine"] == "kb" and not again["reply"]["handoff"]
    # Each answer brings a fresh token; the first one still opens the conversation.
    url = f"{gateway.url}/v1/messages/{again['message_id']}"
    async with http.get(url, params={"token": first["conversation_token"]}) as response:
        assert response.status == 200


async def test_reading_needs_the_conversation_token(
    http: aiohttp.ClientSession, first: Service, second: Service
) -> None:
    status, victim = await post(http, first, {"user_id": "bruna", "conversation_id": "suporte", "text": PRAZO})
    assert status == 200, victim
    _, other = await post(http, first, {"user_id": "mallory", "conversation_id": "suporte", "text": PRAZO})
    _, mine = await post(http, first, {"user_id": "bruna", "conversation_id": "outra", "text": PRAZO})
    events = f"{first.url}/v1/conversations/suporte/events"
    message = f"{first.url}/v1/messages/{victim['message_id']}"
    token = victim["conversation_token"]
    scope = token.partition(".")[0]
    # (mallory's own token opens mallory's own "suporte", a conversation of its own: not this one.)
    wrong = (None, "", mine["conversation_token"], f"{scope}.AAAAAAAAAAAAAAAAAAAAAA", "x", token + "A", token[:-1])
    for candidate in wrong:
        headers = {} if candidate is None else {"X-Conversation-Token": candidate}
        assert await status_of(http, events, headers=headers) == 403, candidate
        assert await status_of(http, events, params={"token": candidate or ""}) == 403, candidate
        assert await status_of(http, message, headers=headers) == 403, candidate
    # Another user's token finds no message of that id among its own user's: answered as any
    # token that does not open it is (an unknown id and a known one must look alike).
    assert await status_of(http, message, headers={"X-Conversation-Token": other["conversation_token"]}) == 403

    # A repeated message_id answers as the original, token included; the same id from another
    # user is that user's own message, never a way to fetch this one's reply.
    repeat = {"user_id": "bruna", "conversation_id": "suporte", "text": PRAZO, "message_id": victim["message_id"]}
    status, again = await post(http, second, repeat)
    assert status == 200 and again["duplicate"] is True
    assert await status_of(http, message, headers={"X-Conversation-Token": again["conversation_token"]}) == 200
    status, foreign = await post(http, first, {**repeat, "user_id": "mallory", "text": "oi"}, wait=0)
    assert status == 202 and "duplicate" not in foreign and foreign["conversation_token"] != token

    # The right token opens it, on any replica, as a header or as `?token=`.
    for gateway in (first, second):
        url = f"{gateway.url}/v1/messages/{victim['message_id']}"
        async with http.get(url, params={"token": token}) as response:
            body = await response.json()
            assert response.status == 200 and body["conversation_id"] == "suporte"
            assert body["message_id"] == victim["message_id"] and body["reply"] == victim["reply"]
    async with (
        asyncio.timeout(10),
        http.get(f"{second.url}/v1/conversations/suporte/events", headers={"X-Conversation-Token": token}) as response,
    ):
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"retry:")


async def test_control_characters_are_refused(http: aiohttp.ClientSession, gateway: Service) -> None:
    forged = "x\nevent: reply\ndata: {}\n\nid: y"
    for field in ("message_id", "conversation_id", "user_id"):
        for bad in (forged, "a\rb", "a\x00b", "tab\there", "a\u2028b", "a\x85b"):
            body = {"user_id": "carla", "text": PRAZO, field: bad}
            status, problem = await post(http, gateway, body, wait=0)
            assert status == 400 and problem["detail"].startswith(field), (field, bad, problem)
    # Metadata nested deeper than any message can carry it: a 400 naming it, never a 500.
    for depth in (253, 600, 1021):  # the whole body nests 255, 602 and 1023 levels deep
        start = orjson.dumps({"user_id": "carla", "text": PRAZO})[:-1] + b',"metadata":{"a":'
        nested = start + b"[" * depth + b"]" * depth + b"}}"
        async with http.post(
            f"{gateway.url}/v1/messages", data=nested, headers={"Content-Type": "application/json"}
        ) as response:
            problem = await response.json(content_type=None)
            assert response.status == 400 and problem["detail"].startswith("metadata"), (depth, problem)
    for path in ("/v1/conversations/a%0Ab/events", "/v1/messages/a%0Db"):
        async with http.get(gateway.url + path, headers={"X-Conversation-Token": "x.y"}) as response:
            assert response.status == 400, path
    # Whatever a reply holds, its event is one `event:` line and one `data:` line.
    reply = ReplyMessage(
        web_id("carla", "m\n\nevent: reply"),
        web_id("carla", "c"),
        "carla",
        "web",
        ReplyContent(text="line\n\ndata: forged", engine="kb", confidence=1.0),
        1.0,
    )
    lines = encode_event(reply, "t").split(b"\n")
    assert lines[0] == b"event: reply" and lines[1].startswith(b"data: {") and lines[2:] == [b"", b""]


async def test_a_web_id_does_not_preclaim_a_telegram_update(
    http: aiohttp.ClientSession, gateway: Service, api: FakeChannelApi
) -> None:
    chat, update_id = 731_000_002, 931_000_010
    for user in (str(chat), "mallory"):
        body = {"user_id": user, "conversation_id": f"telegram:{chat}", "message_id": f"telegram:{update_id}"}
        status, answer = await post(http, gateway, {**body, "text": "oi"}, wait=0)
        assert status == 202 and answer["message_id"] == f"telegram:{update_id}" and "duplicate" not in answer
    status, acknowledged = await post_telegram(http, gateway, telegram_text(update_id, chat, PRAZO))
    assert (status, acknowledged) == (200, {"accepted": 1, "duplicates": 0})
    assert await _replies_to(api, chat, 1) == [kb_answer("prazo-entrega")]
    # Nor a WhatsApp message, whose id is Meta's wamid.
    wamid, sender = "wamid.HBgNNTUxMTk4ODg4Nzc3NxUCABEYEjAwQ0", "5511988887777"
    body = {"user_id": sender, "conversation_id": f"whatsapp:{PHONE_NUMBER_ID}:{sender}", "message_id": wamid}
    assert (await post(http, gateway, {**body, "text": "oi"}, wait=0))[0] == 202
    status, acknowledged = await post_whatsapp(http, gateway, whatsapp_text(wamid, sender, PRAZO))
    assert (status, acknowledged) == (200, {"accepted": 1, "duplicates": 0})

    async def delivered() -> bool:
        return [r.body["text"]["body"] for r in api.delivered_to(sender)] == [kb_answer("prazo-entrega")]

    await eventually(delivered, what="the WhatsApp reply")


async def test_tokens_survive_a_secret_rotation_and_short_secrets_are_refused() -> None:
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    names = Names("t-rotation", TEST_SHARDS)
    try:
        conversation = web_id("ana", "pedido-1")
        old = await ConversationTokens(redis, names, ("old-secret-0123456789",)).issue(conversation)
        rotated = ConversationTokens(redis, names, ("new-secret-0123456789", "old-secret-0123456789"))
        assert await rotated.verify(conversation, old)
        assert await rotated.open("pedido-1", old) == conversation
        new = await rotated.issue(conversation)
        assert new != old and await rotated.verify(conversation, new)
        assert not await ConversationTokens(redis, names, ("new-secret-0123456789",)).verify(conversation, old)
        # Another namespace's gateways never accept it, even with the same secret.
        other = ConversationTokens(redis, Names("t-other", TEST_SHARDS), ("new-secret-0123456789",))
        assert not await other.verify(conversation, new)
    finally:
        await redis.aclose()
    with pytest.raises(ConfigError, match="CONVERSATION_TOKEN_SECRET"):
        Settings.from_env({"CONVERSATION_TOKEN_SECRET": "good-secret-0123456789,short"})
