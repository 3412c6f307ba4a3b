"""WhatsApp Cloud API channel (SPEC 4): verification, signed webhooks, dedupe by wamid, statuses
and unsupported types, replies out through a local stand-in of the Graph API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shared.messages import InboundMessage
from tests.channel_fakes import (
    GRAPH_VERSION,
    PHONE_NUMBER_ID,
    WHATSAPP_ENV,
    FakeChannelApi,
    kb_answer,
    post_whatsapp,
    whatsapp_message,
    whatsapp_status,
    whatsapp_text,
)
from tests.support import AMQP_URL, TEST_SHARDS, Service, Stack, eventually, stored_reply
from tests.test_pipeline import wait_ready

PRAZO = "Qual o prazo de entrega?"
PRAZO_ANSWER = kb_answer("prazo-entrega")
TEXT_ONLY = "não consigo ler esse tipo de mensagem"


@pytest.fixture
async def graph() -> AsyncIterator[FakeChannelApi]:
    api = await FakeChannelApi().start()
    try:
        yield api
    finally:
        await api.close()


async def replies_to(graph: FakeChannelApi, sender: str, count: int) -> list[str]:
    async def arrived() -> list[str] | None:
        texts = [r.text for r in graph.delivered_to(sender)]
        return texts if len(texts) >= count else None

    return await eventually(arrived, what=f"{count} WhatsApp replies to {sender}")


async def test_whatsapp_channel(stack: Stack, http: aiohttp.ClientSession, graph: FakeChannelApi) -> None:
    """One stack for every check: each uses senders of its own, so none sees another's replies."""
    await stack.start("gateway", **WHATSAPP_ENV, **graph.env())
    await stack.start("worker")
    await wait_ready(stack)
    await check_verification_handshake(stack.gateway, http)
    await check_signed_text_message_is_answered_through_the_graph_api(stack.gateway, http, graph)
    await check_same_wamid_three_times_gets_one_reply(stack.gateway, http, graph)
    await check_statuses_and_unsupported_types_get_no_knowledge_reply(stack.gateway, http, graph)
    await check_malformed_signed_notification_names_the_field(stack.gateway, http)


async def check_verification_handshake(gateway: Service, http: aiohttp.ClientSession) -> None:
    url = f"{gateway.url}/webhooks/whatsapp"
    right = {
        "hub.mode": "subscribe",
        "hub.verify_token": WHATSAPP_ENV["WHATSAPP_VERIFY_TOKEN"],
        "hub.challenge": "1158201444",
    }
    async with http.get(url, params=right) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == "1158201444"
    for wrong in ({**right, "hub.verify_token": "guess"}, {**right, "hub.mode": "unsubscribe"}, {"hub.challenge": "1"}):
        async with http.get(url, params=wrong) as response:
            assert response.status == 403
            assert response.content_type == "application/problem+json"
            assert (await response.json())["detail"].startswith("hub.")


async def check_signed_text_message_is_answered_through_the_graph_api(
    gateway: Service, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    sender = "5511987650001"
    wamid = "wamid.HBgNNTUxMTk4NzY1MDAwMRUCABIYFjNFQjBDMEFGM0Q1"
    payload = whatsapp_text(wamid, sender, PRAZO)

    for bad in (None, "sha256=" + "0" * 64, "sha1=abc", "garbage"):
        status, problem = await post_whatsapp(http, gateway, payload, signature=bad)
        assert status == 401, problem
        assert problem["detail"].startswith("X-Hub-Signature-256")
    assert graph.received == []  # nothing unsigned got in

    status, body = await post_whatsapp(http, gateway, payload)
    assert status == 200, body
    assert body == {"accepted": 1, "duplicates": 0}

    [reply] = await replies_to(graph, sender, 1)
    [request] = graph.delivered_to(sender)
    assert request.path == f"/{GRAPH_VERSION}/{PHONE_NUMBER_ID}/messages"
    assert request.headers["Authorization"] == f"Bearer {WHATSAPP_ENV['WHATSAPP_ACCESS_TOKEN']}"
    assert request.body == {"messaging_product": "whatsapp", "to": sender, "type": "text", "text": {"body": reply}}
    assert reply == PRAZO_ANSWER

    # The conversation is per business number and sender; the reply is stored under the wamid.
    stored = await stored_reply(gateway.env["ATENDIMENTO_NAMESPACE"], wamid)
    assert stored is not None and stored["conversation_id"] == f"whatsapp:{PHONE_NUMBER_ID}:{sender}"


async def check_same_wamid_three_times_gets_one_reply(
    gateway: Service, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    one, two = "5511987650002", "5511987650003"

    # Meta retrying one after the other, and the same notification arriving concurrently.
    first = whatsapp_text("wamid.sequential-1", one, PRAZO)
    results = [await post_whatsapp(http, gateway, first) for _ in range(3)]
    concurrent = whatsapp_text("wamid.concurrent-1", two, PRAZO)
    results += await asyncio.gather(*(post_whatsapp(http, gateway, concurrent) for _ in range(3)))
    assert all(status == 200 for status, _ in results), results
    assert sum(body["accepted"] for _, body in results) == 2
    assert sum(body["duplicates"] for _, body in results) == 4

    # A later message of each sender is answered after the first (one conversation, in order):
    # once its reply is out, a second reply to the repeated wamid could only have come before it.
    for sender in (one, two):
        status, _ = await post_whatsapp(http, gateway, whatsapp_text(f"wamid.later-{sender}", sender, "obrigado"))
        assert status == 200
    for sender in (one, two):
        replies = await replies_to(graph, sender, 2)
        assert PRAZO_ANSWER in replies[0]
        assert PRAZO_ANSWER not in replies[1]
        assert len(graph.delivered_to(sender)) == 2


async def check_statuses_and_unsupported_types_get_no_knowledge_reply(
    gateway: Service, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    sender = "5511987650004"

    status, body = await post_whatsapp(http, gateway, whatsapp_status("wamid.ours-1", sender, "read"))
    assert (status, body) == (200, {"accepted": 0, "duplicates": 0})
    status, body = await post_whatsapp(
        http,
        gateway,
        whatsapp_message("wamid.reaction-1", sender, "reaction", {"message_id": "wamid.x", "emoji": "👍"}),
    )
    assert (status, body) == (200, {"accepted": 0, "duplicates": 0})
    location = whatsapp_message(
        "wamid.location-1", sender, "location", {"latitude": -23.55, "longitude": -46.63, "name": PRAZO}
    )
    for _ in range(2):  # a retried notification is still answered once
        status, _ = await post_whatsapp(http, gateway, location)
        assert status == 200
    status, _ = await post_whatsapp(http, gateway, whatsapp_text("wamid.after-location", sender, PRAZO))
    assert status == 200

    replies = await replies_to(graph, sender, 2)
    assert TEXT_ONLY in replies[0]
    assert PRAZO_ANSWER not in replies[0]  # the location's name did not reach the knowledge base
    assert PRAZO_ANSWER in replies[1]
    assert len(graph.delivered_to(sender)) == 2


async def check_malformed_signed_notification_names_the_field(gateway: Service, http: aiohttp.ClientSession) -> None:
    payload = whatsapp_text("wamid.bad", "5511987650005", PRAZO)
    del payload["entry"][0]["changes"][0]["value"]["messages"][0]["from"]
    status, problem = await post_whatsapp(http, gateway, payload)
    assert status == 400
    assert problem["detail"].startswith("entry[0].changes[0].value.messages[0].from")


async def test_one_notifications_messages_are_queued_in_the_order_they_came(
    stack: Stack, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    """15 messages of one sender in one notification (no worker running: the queue is read as is)."""
    gateway = await stack.start("gateway", **WHATSAPP_ENV, **graph.env())
    await wait_ready(stack)
    sender = "5511955550015"
    payload = whatsapp_text(f"wamid.batch-{uuid.uuid4().hex}-0", sender, "linha 0")
    messages = payload["entry"][0]["changes"][0]["value"]["messages"]
    for i in range(1, 15):
        messages.append({**messages[0], "id": f"wamid.batch-{uuid.uuid4().hex}-{i}", "text": {"body": f"linha {i}"}})
    status, body = await post_whatsapp(http, gateway, payload)
    assert status == 200 and body["accepted"] == 15
    queued: list[str] = []

    async def take(delivery: AbstractIncomingMessage) -> None:
        queued.append(InboundMessage.from_bytes(delivery.body).text)

    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for shard in range(TEST_SHARDS):
            queue = await channel.declare_queue(f"{stack.namespace}.inbound.{shard}", passive=True)
            await queue.consume(take, no_ack=True)

        async def all_taken() -> bool:
            return len(queued) >= 15

        await eventually(all_taken, what="the 15 queued messages")
    finally:
        await connection.close()
    assert queued == [f"linha {i}" for i in range(15)]
