"""Proactive messages (SPEC 4 `POST /v1/outbound`) and delivery statuses, end to end: a real gateway
(in this process, so its clock can be moved a day on instead of waiting one) and a real worker on
the shared RabbitMQ and Redis, with the Graph API and the Bot API as local stand-ins."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.gateway.keys import CLOCK
from shared.contacts import Clock
from shared.names import Names
from shared.receipts import EARLY_STATUS_TTL_S
from shared.settings import Settings
from tests.support import TEST_SHARDS, Service, Stack, eventually, free_port, get_json
from tests.support.channel_fakes import (
    PHONE_NUMBER_ID,
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    FakeChannelApi,
    Received,
    post_telegram,
    post_whatsapp,
    telegram_tap,
    telegram_text,
    whatsapp_message,
    whatsapp_status,
    whatsapp_text,
)
from tests.support.pipeline import wait_ready

API_KEY = "outbound-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HOUR = 3600.0
DAY = 86_400
OPT_OUT_CONFIRMATION = "não vai mais receber nossas mensagens automáticas"


@dataclass
class Gateway:
    service: Service  # its address, for the webhook senders
    clock: Clock
    http: aiohttp.ClientSession
    namespace: str

    @property
    def names(self) -> Names:
        return Names(self.namespace, TEST_SHARDS)

    async def send(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        url = f"{self.service.url}/v1/outbound"
        async with self.http.post(url, json=body, headers=AUTH if headers is None else headers) as response:
            return response.status, await response.json(content_type=None)

    async def status(self, message_id: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.service.url}/v1/messages/{message_id}", headers=AUTH) as response:
            return response.status, await response.json(content_type=None)


def gateway_env(stack: Stack, api: FakeChannelApi, **overrides: str) -> dict[str, str]:
    """Both channels configured, API keys required, proactive messages from PHONE_NUMBER_ID."""
    return stack.env(
        **WHATSAPP_ENV,
        **TELEGRAM_ENV,
        **api.env(),
        GATEWAY_API_KEYS=API_KEY,
        WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID,
        **overrides,
    )


@asynccontextmanager
async def in_process_gateway(
    stack: Stack, http: aiohttp.ClientSession, env: dict[str, str], log_path: Path
) -> AsyncIterator[Gateway]:
    """A gateway of the stack's namespace in this process (its clock can be moved), once healthy."""
    port = free_port()
    env = {**env, "GATEWAY_PORT": str(port)}
    app = create_app(Settings.from_env(env))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        service = Service("gateway", port, env, log_path)
        await eventually(lambda: _healthy(http, service), what="the in-process gateway ready")
        yield Gateway(service, app[CLOCK], http, stack.namespace)
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway(
    stack: Stack, api: FakeChannelApi, http: aiohttp.ClientSession, tmp_path: Path
) -> AsyncIterator[Gateway]:
    """An in-process gateway (`gateway_env`) and a worker."""
    async with in_process_gateway(stack, http, gateway_env(stack, api), tmp_path / "gateway-in-process.log") as found:
        await stack.start("worker", **WHATSAPP_ENV, **TELEGRAM_ENV, **api.env())
        await wait_ready(stack)
        yield found


async def _healthy(http: aiohttp.ClientSession, service: Service) -> bool:
    status, _ = await get_json(http, f"{service.url}/monitoring/health")
    return status == 200


def customer() -> str:
    return "55119" + str(uuid.uuid4().int)[:8]


async def arrived(api: FakeChannelApi, recipient: str | int, count: int) -> list[Received]:
    async def enough() -> list[Received] | None:
        found = api.delivered_to(recipient)
        return found if len(found) >= count else None

    return await eventually(enough, what=f"{count} messages to {recipient}")


async def customer_writes(gateway: Gateway, api: FakeChannelApi, sender: str, text: str) -> Received:
    """The customer's message, and the bot's reply to it (so the gateway has seen it)."""
    before = len(api.delivered_to(sender))
    status, body = await post_whatsapp(
        gateway.http, gateway.service, whatsapp_text(f"wamid.{uuid.uuid4().hex}", sender, text)
    )
    assert status == 200, body
    return (await arrived(api, sender, before + 1))[-1]


async def test_text_and_template_reach_the_graph_api_in_its_documented_shape(
    gateway: Gateway, api: FakeChannelApi, redis: Redis
) -> None:
    sender = customer()
    await customer_writes(gateway, api, sender, "Qual o prazo de entrega?")
    status, body = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Seu pedido saiu para entrega."})
    assert status == 202, body
    assert body["status"] == "queued" and set(body) == {"message_id", "status"}
    text = (await arrived(api, sender, 2))[-1]
    assert text.path.endswith(f"/{PHONE_NUMBER_ID}/messages")
    assert text.body == {
        "messaging_product": "whatsapp",
        "to": sender,
        "type": "text",
        "text": {"body": "Seu pedido saiu para entrega."},
    }

    # A template reaches a customer who never wrote too (from WHATSAPP_PHONE_NUMBER_ID).
    stranger = customer()
    components = [{"type": "body", "parameters": [{"type": "text", "text": "#1234"}]}]
    template = {"name": "order_shipped", "language": "pt_BR", "components": components}
    status, body = await gateway.send({"channel": "whatsapp", "to": "+" + stranger, "template": template})
    assert status == 202, body
    [sent] = await arrived(api, stranger, 1)
    assert sent.body == {
        "messaging_product": "whatsapp",
        "to": stranger,
        "type": "template",
        "template": {
            "name": "order_shipped",
            "language": {"policy": "deterministic", "code": "pt_BR"},
            "components": components,
        },
    }

    # Recorded in the customer's conversation, as the admin area shows it.
    log = await redis.lrange(gateway.names.conversation_log_key(f"whatsapp:{PHONE_NUMBER_ID}:{stranger}"), 0, -1)
    [entry] = [orjson.loads(raw) for raw in log]
    assert entry["kind"] == "outbound" and entry["template"]["name"] == "order_shipped"
    status, found = await gateway.status(body["message_id"])
    assert status == 200, found
    assert found["channel"] == "whatsapp" and found["to"] == stranger
    assert found["delivery"]["status"] == "accepted"


async def test_telegram_text_goes_out_with_send_message(gateway: Gateway, api: FakeChannelApi) -> None:
    chat = 700_000_000 + uuid.uuid4().int % 1_000_000
    status, body = await gateway.send({"channel": "telegram", "to": chat, "text": "Lembrete: consulta amanhã às 9h."})
    assert status == 202, body
    [sent] = await arrived(api, chat, 1)
    assert sent.path.endswith("/sendMessage")
    assert sent.body == {"chat_id": chat, "text": "Lembrete: consulta amanhã às 9h."}


async def test_the_24_hour_window_both_ways(gateway: Gateway, api: FakeChannelApi) -> None:
    sender = customer()
    await customer_writes(gateway, api, sender, "oi")

    gateway.clock.offset_s = 23 * HOUR  # inside the window: free text goes
    status, body = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Ainda posso ajudar?"})
    assert status == 202, body
    assert (await arrived(api, sender, 2))[-1].text == "Ainda posso ajudar?"

    gateway.clock.offset_s = 25 * HOUR  # outside: refused, nothing queued
    status, problem = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Voltou?"})
    assert status == 422, problem
    assert (
        problem["detail"].startswith("text: ") and "24 hours" in problem["detail"] and "template" in problem["detail"]
    )
    status, body = await gateway.send(
        {"channel": "whatsapp", "to": sender, "template": {"name": "we_miss_you", "language": "pt_BR"}}
    )
    assert status == 202, body
    # The template follows anything queued before it to this customer: the refused text never went.
    messages = await arrived(api, sender, 3)
    assert messages[-1].body["type"] == "template"
    assert [m.text for m in messages].count("Voltou?") == 0 and len(messages) == 3

    # Writing again opens a new window.
    await customer_writes(gateway, api, sender, "obrigado")
    status, body = await gateway.send({"channel": "whatsapp", "to": sender, "text": "De nada!"})
    assert status == 202, body
    # So does a message the bot cannot read (a sticker): the customer wrote all the same.
    gateway.clock.offset_s = 50 * HOUR
    status, _ = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Oi?"})
    assert status == 422
    sticker = whatsapp_message(f"wamid.{uuid.uuid4().hex}", sender, "sticker", {"id": "sticker-1"})
    assert (await post_whatsapp(gateway.http, gateway.service, sticker))[0] == 200
    await arrived(api, sender, 6)  # the "please write" answer
    status, body = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Oi!"})
    assert status == 202, body


async def test_a_repeated_message_id_is_sent_once(gateway: Gateway, api: FakeChannelApi) -> None:
    sender = customer()
    await customer_writes(gateway, api, sender, "oi")
    request = {"channel": "whatsapp", "to": sender, "text": "Pedido confirmado.", "message_id": "order-77-confirmed"}
    first = await gateway.send(request)
    others = [await gateway.send(request), *await asyncio.gather(*(gateway.send(request) for _ in range(3)))]
    assert first == (202, {"message_id": "order-77-confirmed", "status": "queued"})
    assert all(
        result == (202, {"message_id": "order-77-confirmed", "status": "queued", "duplicate": True})
        for result in others
    )
    # A later message to the same customer goes after it; once that is out, a copy could only have come before.
    status, _ = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Obrigado pela compra."})
    assert status == 202
    messages = await arrived(api, sender, 3)
    assert [m.text for m in messages[1:]] == ["Pedido confirmado.", "Obrigado pela compra."]


async def test_a_retry_answers_as_the_original_did_whatever_changed_since(
    stack: Stack, gateway: Gateway, api: FakeChannelApi, redis: Redis, tmp_path: Path
) -> None:
    """SPEC 4: idempotent by `message_id`. Once an id was accepted, its retry is a duplicate (202,
    nothing queued) even when a new message would now be refused: the window closed, the customer
    opted out, the channel is no longer configured. A new id still gets the 422."""
    sender = customer()
    await customer_writes(gateway, api, sender, "oi")
    request = {"channel": "whatsapp", "to": sender, "text": "Seu pedido saiu.", "message_id": "ob-wa-1"}
    duplicate = (202, {"message_id": "ob-wa-1", "status": "queued", "duplicate": True})
    # Four at once: one claim, one queued.
    first = await asyncio.gather(*(gateway.send(request) for _ in range(4)))
    assert sorted(first, key=lambda result: "duplicate" in result[1]) == [
        (202, {"message_id": "ob-wa-1", "status": "queued"}),
        *[duplicate] * 3,
    ]
    assert (await arrived(api, sender, 2))[-1].text == "Seu pedido saiu."

    def refused(result: tuple[int, dict[str, Any]], field: str, words: str) -> bool:
        status, problem = result
        return status == 422 and problem["detail"].startswith(f"{field}: ") and words in problem["detail"]

    gateway.clock.offset_s = 25 * HOUR  # the 24-hour window closed
    assert await gateway.send(request) == duplicate
    assert refused(await gateway.send({**request, "message_id": "ob-wa-2"}), "text", "24 hours")

    confirmation = await customer_writes(gateway, api, sender, "parar")  # opted out
    assert OPT_OUT_CONFIRMATION in confirmation.text
    assert await gateway.send(request) == duplicate
    assert await asyncio.gather(*(gateway.send(request) for _ in range(3))) == [duplicate] * 3
    new_ids = await asyncio.gather(*(gateway.send({**request, "message_id": "ob-wa-3"}) for _ in range(3)))
    assert all(refused(result, "to", "opted out") for result in new_ids)

    # A gateway of the same deployment where WhatsApp is no longer configured.
    bare = stack.env(GATEWAY_API_KEYS=API_KEY)
    async with in_process_gateway(stack, gateway.http, bare, tmp_path / "gateway-bare.log") as other:
        assert await other.send(request) == duplicate
        assert refused(await other.send({**request, "message_id": "ob-wa-4"}), "channel", "not configured")

    # Accepted, logged and sent once; none of the refused ids was claimed.
    conversation = f"whatsapp:{PHONE_NUMBER_ID}:{sender}"
    log = [orjson.loads(raw) for raw in await redis.lrange(gateway.names.conversation_log_key(conversation), 0, -1)]
    assert [entry["message_id"] for entry in log if entry.get("kind") == "outbound"] == ["outbound:ob-wa-1"]
    for refused_id in ("ob-wa-2", "ob-wa-3", "ob-wa-4"):
        assert not await redis.exists(gateway.names.claim_key("outbound:" + refused_id))
    # Writing again opts back in; a new message goes after anything queued before it to this customer.
    await customer_writes(gateway, api, sender, "Qual o prazo de entrega?")
    status, _ = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Obrigado por voltar!"})
    assert status == 202
    texts = [m.text for m in await arrived(api, sender, 5)]
    assert texts[-1] == "Obrigado por voltar!" and texts.count("Seu pedido saiu.") == 1 and len(texts) == 5


async def test_opt_out_and_back_in(gateway: Gateway, api: FakeChannelApi) -> None:
    sender = customer()
    confirmation = await customer_writes(gateway, api, sender, "Parar")
    assert OPT_OUT_CONFIRMATION in confirmation.text
    for request in (
        {"channel": "whatsapp", "to": sender, "text": "Promoção!"},
        {"channel": "whatsapp", "to": sender, "template": {"name": "promo", "language": "pt_BR"}},
    ):
        status, problem = await gateway.send(request)
        assert status == 422, problem
        assert problem["detail"].startswith("to: ") and "opted out" in problem["detail"]

    await customer_writes(gateway, api, sender, "Qual o prazo de entrega?")  # any later message opts back in
    status, body = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Obrigado por voltar!"})
    assert status == 202, body
    assert (await arrived(api, sender, 3))[-1].text == "Obrigado por voltar!"

    # The opt-out button of a template (its payload), and a Telegram button, do the same.
    button = {"payload": "OPT_OUT", "text": "Não quero receber"}
    status, _ = await post_whatsapp(
        gateway.http, gateway.service, whatsapp_message(f"wamid.{uuid.uuid4().hex}", sender, "button", button)
    )
    assert status == 200
    assert OPT_OUT_CONFIRMATION in (await arrived(api, sender, 4))[-1].text
    status, problem = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Oi?"})
    assert status == 422 and "opted out" in problem["detail"]
    chat = 800_000_000 + uuid.uuid4().int % 1_000_000
    status, _ = await post_telegram(
        gateway.http, gateway.service, telegram_tap(1 + uuid.uuid4().int % 10**9, chat, "opt_out")
    )
    assert status == 200
    await arrived(api, chat, 1)
    status, problem = await gateway.send({"channel": "telegram", "to": chat, "text": "Oi?"})
    assert status == 422 and "opted out" in problem["detail"]
    status, _ = await post_telegram(
        gateway.http, gateway.service, telegram_text(1 + uuid.uuid4().int % 10**9, chat, "oi")
    )
    assert status == 200
    await arrived(api, chat, 2)
    status, _ = await gateway.send({"channel": "telegram", "to": chat, "text": "Oi de novo!"})
    assert status == 202


async def test_statuses_update_the_message_and_a_failure_shows_its_code(
    gateway: Gateway, api: FakeChannelApi, redis: Redis
) -> None:
    sender = customer()
    reply = await customer_writes(gateway, api, sender, "Qual o prazo de entrega?")
    status, body = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Chegou?"})
    assert status == 202
    sent = (await arrived(api, sender, 2))[-1]
    wamid = sent.answer["messages"][0]["id"]

    async def delivery_is(message_id: str, expected: str) -> dict[str, Any] | None:
        _, found = await gateway.status(message_id)
        return found if found.get("delivery") and found["delivery"]["status"] == expected else None

    # Out of order on purpose: a late "delivered" does not move a read message back.
    for name in ("sent", "read", "delivered"):
        status, _ = await post_whatsapp(gateway.http, gateway.service, whatsapp_status(wamid, sender, name))
        assert status == 200
    found = await eventually(lambda: delivery_is(body["message_id"], "read"), what="the read status")
    assert found["status"] == "read"
    assert set(found["delivery"]["history"]) == {"accepted", "sent", "delivered", "read"}
    assert found["delivery"]["error"] is None

    # A failed one: the Graph API's code and title.
    status, second = await gateway.send(
        {"channel": "whatsapp", "to": sender, "template": {"name": "promo", "language": "pt_BR"}}
    )
    assert status == 202
    wamid = (await arrived(api, sender, 3))[-1].answer["messages"][0]["id"]
    failed = whatsapp_status(wamid, sender, "failed")
    failed["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [
        {
            "code": 131047,
            "title": "Re-engagement message",
            "message": "Re-engagement message",
            "error_data": {"details": "Message failed to send because more than 24 hours have passed."},
        }
    ]
    status, _ = await post_whatsapp(gateway.http, gateway.service, failed)
    assert status == 200
    found = await eventually(lambda: delivery_is(second["message_id"], "failed"), what="the failed status")
    assert found["delivery"]["error"]["code"] == 131047
    assert found["delivery"]["error"]["title"] == "Re-engagement message"
    async with gateway.http.get(f"{gateway.service.url}/metrics") as response:
        metrics = await response.text()
    assert 'atendimento_delivery_failures_total{channel="whatsapp",code="131047"} 1.0' in metrics

    # The bot's own reply is tracked too, under the customer's message it answers.
    reply_wamid = reply.answer["messages"][0]["id"]
    status, _ = await post_whatsapp(gateway.http, gateway.service, whatsapp_status(reply_wamid, sender, "delivered"))
    assert status == 200
    message_id = str(await redis.get(gateway.names.wamid_key(reply_wamid)))
    assert message_id.startswith("wamid.")
    assert await redis.hget(gateway.names.receipt_key(message_id), "status") == "delivered"


async def test_a_status_that_comes_before_its_send_is_recorded_is_kept_for_it(
    gateway: Gateway, api: FakeChannelApi, redis: Redis
) -> None:
    """The statuses notification and the send's own answer travel apart: a status may arrive
    before the send that returned its wamid was recorded. It waits for that recording (a while:
    a wamid never recorded is forgotten) and lands on the message then, counted once."""
    sender = customer()
    wamid = f"wamid.early-{uuid.uuid4().hex[:8]}"
    failed = whatsapp_status(wamid, sender, "failed")
    failed["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [{"code": 131026, "title": "Undeliverable"}]
    for notification in (whatsapp_status(wamid, sender, "sent"), failed):
        status, _ = await post_whatsapp(gateway.http, gateway.service, notification)
        assert status == 200
    early = gateway.names.early_statuses_key(wamid)
    assert await redis.llen(early) == 2 and 0 < await redis.ttl(early) <= EARLY_STATUS_TTL_S

    api.next_wamids.append(wamid)
    status, body = await gateway.send(
        {"channel": "whatsapp", "to": sender, "template": {"name": "promo", "language": "pt_BR"}}
    )
    assert status == 202

    async def failed_delivery() -> dict[str, Any] | None:
        _, found = await gateway.status(body["message_id"])
        delivery = found.get("delivery") or {}
        return delivery if delivery.get("status") == "failed" else None

    delivery = await eventually(failed_delivery, what="the early statuses on the message")
    assert set(delivery["history"]) == {"accepted", "sent", "failed"}
    assert delivery["error"]["code"] == 131026 and delivery["error"]["title"] == "Undeliverable"
    assert not await redis.exists(early)
    async with gateway.http.get(f"{gateway.service.url}/metrics") as response:
        metrics = await response.text()
    assert 'atendimento_delivery_failures_total{channel="whatsapp",code="131026"} 1.0' in metrics


async def test_outbound_records_never_outlive_retention_days(
    stack: Stack, api: FakeChannelApi, http: aiohttp.ClientSession, redis: Redis, tmp_path: Path
) -> None:
    """SPEC 2: RETENTION_DAYS bounds outbound records. At 2 days, a proactive message's receipt
    (where it went, its statuses) and its wamid's pointer expire within 2 days of its first
    write, however late a status renews them, and a status after that does not bring it back."""
    env = gateway_env(stack, api, RETENTION_DAYS="2")
    async with in_process_gateway(stack, http, env, tmp_path / "gateway-retention.log") as gateway:
        stranger = customer()
        template = {"name": "order_shipped", "language": "pt_BR"}
        status, body = await gateway.send({"channel": "whatsapp", "to": stranger, "template": template})
        assert status == 202, body
        wamid = (await arrived(api, stranger, 1))[0].answer["messages"][0]["id"]
        receipt = gateway.names.receipt_key("outbound:" + body["message_id"])

        async def addressed_and_accepted() -> bool:
            raw = await redis.hgetall(receipt)
            return raw.get("to") == stranger and raw.get("status") == "accepted"

        await eventually(addressed_and_accepted, what="the receipt, addressed and accepted")
        for key in (receipt, gateway.names.wamid_key(wamid)):
            assert 0 < await redis.ttl(key) <= 2 * DAY, key

        async def status_posted(name: str) -> None:
            status, _ = await post_whatsapp(gateway.http, gateway.service, whatsapp_status(wamid, stranger, name))
            assert status == 200

        # Written first a day and a half ago: a status now renews it for what is left of the 2 days.
        now, _ = await redis.time()
        await redis.hset(receipt, "since", now - int(1.5 * DAY))
        await status_posted("read")
        assert await redis.hget(receipt, "status") == "read"
        assert 0 < await redis.ttl(receipt) <= 0.5 * DAY
        # Past them, a late status removes it instead.
        await redis.hset(receipt, "since", now - 3 * DAY)
        await status_posted("failed")
        assert not await redis.exists(receipt)


async def test_bad_requests_name_the_field(gateway: Gateway) -> None:
    sender = customer()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"channel": "sms", "to": sender, "text": "x"}, "channel"),
        ({"channel": "whatsapp", "text": "x"}, "to"),
        ({"channel": "whatsapp", "to": "not-a-number", "text": "x"}, "to"),
        ({"channel": "whatsapp", "to": sender}, "text, template"),
        (
            {"channel": "whatsapp", "to": sender, "text": "x", "template": {"name": "a", "language": "pt_BR"}},
            "text, template",
        ),
        ({"channel": "whatsapp", "to": sender, "text": "  "}, "text"),
        ({"channel": "whatsapp", "to": sender, "template": {"name": "Bad Name", "language": "pt_BR"}}, "template.name"),
        (
            {"channel": "whatsapp", "to": sender, "template": {"name": "ok", "language": "portuguese!"}},
            "template.language",
        ),
        (
            {"channel": "whatsapp", "to": sender, "template": {"name": "ok", "language": "pt_BR", "components": "x"}},
            "template.components",
        ),
        ({"channel": "telegram", "to": "42", "template": {"name": "ok", "language": "pt_BR"}}, "template"),
        ({"channel": "whatsapp", "to": sender, "text": "x", "message_id": ""}, "message_id"),
        ({"channel": "whatsapp", "to": sender, "text": "x", "extra": 1}, "extra"),
    ]
    for request, field in cases:
        status, problem = await gateway.send(request)
        assert status == 400, (request, problem)
        assert problem["detail"].startswith(f"{field}: "), (request, problem)
    status, problem = await gateway.send({"channel": "whatsapp", "to": sender, "text": "x"}, headers={})
    assert status == 401 and problem["detail"].startswith("Authorization")


ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


async def test_the_admin_form_sends_one_audited_and_the_conversation_shows_its_delivery(
    stack: Stack, gateway: Gateway, api: FakeChannelApi
) -> None:
    monitor = await stack.start(
        "monitor", ADMIN_TOKEN=ADMIN_TOKEN, WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID, **WHATSAPP_ENV, **api.env()
    )
    sender = customer()
    await customer_writes(gateway, api, sender, "Qual o prazo de entrega?")
    conversation = f"whatsapp:{PHONE_NUMBER_ID}:{sender}"
    pt = {"Accept-Language": "pt-BR,pt;q=0.9"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        login = {"operator": "Ana", "token": ADMIN_TOKEN}
        async with browser.post(monitor.url + "/admin/login", data=login) as response:
            assert response.status == 200
        query = {"channel": "whatsapp", "to": sender}
        async with browser.get(monitor.url + "/admin/outbound", params=query, headers=pt) as response:
            page = await response.text()
            assert response.status == 200 and "Enviar uma mensagem ativa" in page and f'value="{sender}"' in page
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]

        form = {"csrf": csrf, "channel": "whatsapp", "to": sender, "text": "Seu pedido chegou?"}
        async with browser.post(monitor.url + "/admin/outbound", data=form, headers=pt) as response:
            page = await response.text()
            assert response.status == 200 and str(response.url.path) == "/admin/conversation", page[:500]
            assert "A mensagem entrou na fila de envio." in page and "Mensagem ativa" in page
        sent = (await arrived(api, sender, 2))[-1]
        assert sent.text == "Seu pedido chegou?"

        # Refused by the same rules as the API: the form again, saying why, and nothing sent.
        stranger = customer()
        refused = {"csrf": csrf, "channel": "whatsapp", "to": stranger, "text": "Oi!"}
        async with browser.post(monitor.url + "/admin/outbound", data=refused) as response:
            page = await response.text()
            assert response.status == 422 and "24 hours" in page and f'value="{stranger}"' in page

        # The channel says it failed: the conversation view shows the code and title.
        wamid = sent.answer["messages"][0]["id"]
        failed = whatsapp_status(wamid, sender, "failed")
        failed["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [
            {"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message"}
        ]
        status, _ = await post_whatsapp(gateway.http, gateway.service, failed)
        assert status == 200

        async def shows_failure() -> str | None:
            async with browser.get(monitor.url + "/admin/conversation", params={"id": conversation}) as response:
                text = await response.text()
                return text if "131047 Re-engagement message" in text else None

        page = await eventually(shows_failure, what="the failure in the conversation view")
        assert 'data-status="failed"' in page

    # Scripts use the JSON API with the token; every send is audited with its outcome.
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    template = {"channel": "whatsapp", "to": stranger, "template": {"name": "hello", "language": "en"}}
    async with gateway.http.post(monitor.url + "/admin/api/outbound", json=template, headers=bearer) as response:
        assert response.status == 200, await response.text()
    assert (await arrived(api, stranger, 1))[0].body["type"] == "template"
    async with gateway.http.get(monitor.url + "/admin/api/audit", headers=bearer) as response:
        entries = (await response.json())["entries"]
    sends = [(e["actor"], e["outcome"]) for e in entries if e["action"] == "send_outbound"]
    assert ("Ana", "ok") in sends and ("Ana", "refused") in sends
    assert [outcome for _, outcome in sends].count("ok") == 2


async def test_the_admin_views_on_desktop_and_phone(
    stack: Stack, gateway: Gateway, api: FakeChannelApi, browser: Browser, tmp_path: Path
) -> None:
    """The send form and a conversation with a proactive message's delivery and a failure, at 1280
    and 390 px in both languages: nothing scrolls sideways (screenshots in tmp_path)."""
    monitor = await stack.start("monitor", ADMIN_TOKEN=ADMIN_TOKEN, **WHATSAPP_ENV, **api.env())
    sender = customer()
    await customer_writes(gateway, api, sender, "Qual o prazo de entrega?")
    status, _ = await gateway.send({"channel": "whatsapp", "to": sender, "text": "Seu pedido saiu para entrega."})
    assert status == 202
    wamid = (await arrived(api, sender, 2))[-1].answer["messages"][0]["id"]
    failed = whatsapp_status(wamid, sender, "failed")
    failed["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [
        {"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message"}
    ]
    assert (await post_whatsapp(gateway.http, gateway.service, failed))[0] == 200
    conversation = f"whatsapp:{PHONE_NUMBER_ID}:{sender}"
    for language, width in [(lang, w) for lang in ("pt-BR", "en") for w in (1280, 390)]:
        context = await browser.new_context(locale=language, viewport={"width": width, "height": 900})
        page = await context.new_page()
        try:
            await page.goto(monitor.url + "/admin")
            await page.fill('input[name="operator"]', "Ana")
            await page.fill('input[name="token"]', ADMIN_TOKEN)
            async with page.expect_navigation():
                await page.click('#login-form button[type="submit"]')
            await page.goto(f"{monitor.url}/admin/conversation?id={conversation}")
            await expect(page.locator(".delivery-failed")).to_contain_text("131047")
            await page.click(".outbound-link")
            await expect(page.locator('input[name="to"]')).to_have_value(sender)
            await page.screenshot(path=str(tmp_path / f"outbound-{language}-{width}.png"), full_page=True)
            assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            await page.go_back()
            await page.screenshot(path=str(tmp_path / f"conversation-{language}-{width}.png"), full_page=True)
            assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        finally:
            await context.close()
