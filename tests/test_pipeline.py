"""A message in through the gateway, through RabbitMQ and a worker, a reply out (SPEC 3 and 4)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson

from shared.names import Names
from tests.support import PRAZO, TEST_SHARDS, Stack, eventually, post_message, stats_when, web_id
from tests.support.pipeline import read_events, start_stack


async def test_wait_returns_the_knowledge_base_answer(stack: Stack, http: aiohttp.ClientSession) -> None:
    await start_stack(stack)
    status, body = await post_message(http, stack.gateway, {"user_id": "ana", "text": PRAZO}, wait=10)
    assert status == 200, body
    assert body["status"] == "answered"
    assert body["conversation_id"] == "user:ana"
    assert body["reply"]["engine"] == "kb"
    assert body["reply"]["sources"] == ["prazo-entrega"] or body["reply"]["sources"]
    assert body["reply"]["handoff"] is False
    assert 0 <= body["reply"]["confidence"] <= 1
    assert body["latency_ms"] > 0


async def test_wait_zero_is_202_and_the_reply_arrives_on_sse(stack: Stack, http: aiohttp.ClientSession) -> None:
    await start_stack(stack)
    conversation = f"c-{uuid.uuid4().hex}"
    connected = asyncio.Event()
    reader = asyncio.create_task(read_events(http, stack.gateway, conversation, 1, connected, user_id="bia"))
    await asyncio.wait_for(connected.wait(), 10)
    status, body = await post_message(
        http, stack.gateway, {"user_id": "bia", "conversation_id": conversation, "text": PRAZO}
    )
    assert status == 202, body
    token = body.pop("conversation_token")
    assert body == {"message_id": body["message_id"], "conversation_id": conversation, "status": "queued"}
    (event,) = await reader
    # A token of the same conversation (each one is issued fresh: the stream's own comes back).
    assert event["conversation_token"].partition(".")[0] == token.partition(".")[0]
    assert event["message_id"] == body["message_id"]
    assert event["conversation_id"] == conversation
    assert event["status"] == "answered"
    assert event["reply"]["text"] and event["latency_ms"] > 0


async def test_same_message_id_twice_gives_one_reply_and_one_count(stack: Stack, http: aiohttp.ClientSession) -> None:
    await start_stack(stack)
    message_id = f"m-{uuid.uuid4().hex}"
    body = {"user_id": "caio", "text": PRAZO, "message_id": message_id}
    results = await asyncio.gather(*(post_message(http, stack.gateway, body, wait=10) for _ in range(5)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 5, results
    replies = {orjson.dumps(reply["reply"]) for _, reply in results}
    assert len(replies) == 1
    assert sum(1 for _, reply in results if reply.get("duplicate")) == 4
    status, again = await post_message(http, stack.gateway, body)
    assert status == 200 and again["duplicate"] is True and again["reply"] == results[0][1]["reply"]

    stats = await stats_when(http, stack.monitor, lambda body: body["messages"]["total"] >= 1)
    assert stats["messages"]["total"] == 1
    assert stats["messages"]["last_5_minutes"] == 1


async def test_one_conversation_is_answered_in_order_with_two_workers(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.extra_env["MEMORY_TURNS"] = "20"
    await start_stack(stack, workers=2)
    conversation = f"order-{uuid.uuid4().hex}"
    texts = [f"{PRAZO} ({i})" for i in range(10)]
    for i, text in enumerate(texts):
        status, _ = await post_message(
            http,
            stack.gateway,
            {"user_id": "duda", "conversation_id": conversation, "text": text, "message_id": f"{conversation}-{i}"},
        )
        assert status == 202
    redis_memory = await _memory(stack, web_id("duda", conversation), 20)
    user_turns = [turn["text"] for turn in redis_memory if turn["role"] == "user"]
    assert user_turns == texts


async def _memory(stack: Stack, conversation: str, length: int) -> list[dict[str, str]]:
    from redis.asyncio import Redis

    from tests.support import REDIS_URL

    redis = Redis.from_url(REDIS_URL)
    try:

        async def full() -> list[bytes] | None:
            items: list[bytes] = await redis.lrange(  # type: ignore[assignment]
                Names(stack.namespace, TEST_SHARDS).memory_key(conversation), 0, -1
            )
            return items if len(items) >= length else None

        return [orjson.loads(item) for item in await eventually(full, what="all turns in memory")]
    finally:
        await redis.aclose()
