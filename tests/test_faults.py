"""Fault tests that do real harm: SIGKILL a worker, cut every broker connection, start without a broker."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import Awaitable

import aiohttp
import pytest
from redis.asyncio import Redis

from shared.names import Names
from tests.support import AMQP_PORT, PRAZO, REDIS_URL, TEST_SHARDS, Stack, eventually, get_json, post_message, web_id
from tests.support.faultproxy import FaultProxy
from tests.support.pipeline import read_events, start_stack, wait_ready


@pytest.mark.parametrize(
    ("stop_signal", "exit_code"),
    [
        (signal.SIGKILL, -signal.SIGKILL),  # no chance to ack or hand anything back
        (signal.SIGTERM, 0),  # stops taking work, finishes what it holds, leaves cleanly
    ],
    ids=["SIGKILL", "SIGTERM"],
)
async def test_worker_stopped_mid_work_every_message_is_answered_exactly_once(
    stack: Stack, http: aiohttp.ClientSession, stop_signal: signal.Signals, exit_code: int
) -> None:
    await stack.start("gateway")
    monitor = await stack.start("monitor")
    conversation = f"stop-{uuid.uuid4().hex}"
    total = 300
    connected = asyncio.Event()
    reader = asyncio.create_task(
        read_events(http, stack.gateway, conversation, total, connected, timeout=90, user_id="eva")
    )
    await asyncio.wait_for(connected.wait(), 10)
    # Queue everything first, so the worker is sure to hold unfinished messages when it stops.
    for i in range(total):
        status, _ = await post_message(
            http, stack.gateway, {"user_id": "eva", "conversation_id": conversation, "text": f"{PRAZO} {i}"}
        )
        assert status == 202
    worker = await stack.start("worker")

    async def answered() -> int:
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        return int(stats["messages"]["total"])

    await eventually(answered, what="the first replies")
    worker.kill(stop_signal)
    assert worker.process is not None
    assert await asyncio.to_thread(worker.process.wait, 30) == exit_code, worker.logs()
    counted_before = await answered()
    assert counted_before < total, "the worker finished everything before it was stopped"
    committed_before = await _committed(stack, web_id("eva", conversation))
    await stack.start("worker")

    events = await reader
    assert len(events) == total
    assert set(Counter(event["message_id"] for event in events).values()) == {1}
    # A clean stop flushes its statistics: every message counted once. A SIGKILL loses what its
    # worker counted since its last flush (shared/recorder.py), never more, and nothing is counted
    # twice: the new worker counts exactly the messages it committed.
    unflushed = committed_before - counted_before if stop_signal is signal.SIGKILL else 0
    assert stop_signal is signal.SIGKILL or committed_before == counted_before
    await eventually(lambda: _equals(answered(), total - unflushed), what="every message counted once")


async def _committed(stack: Stack, conversation_id: str) -> int:
    """The messages committed in a conversation: its log's entries (written by the commit script)."""
    redis = Redis.from_url(REDIS_URL)
    try:
        return int(await redis.llen(Names(stack.namespace, TEST_SHARDS).conversation_log_key(conversation_id)))
    finally:
        await redis.aclose()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_all_broker_connections_dropped_services_recover(stack: Stack, http: aiohttp.ClientSession) -> None:
    # Every service reaches the broker through a proxy that then cuts all their connections at
    # once (the shared broker itself is never harmed: other test runs use it too).
    proxy = await FaultProxy(AMQP_PORT).start()
    try:
        stack.extra_env["AMQP_URL"] = proxy.url("amqp://guest:guest@", "/")
        await start_stack(stack)
        status, _ = await post_message(http, stack.gateway, {"user_id": "fabio", "text": PRAZO}, wait=10)
        assert status == 200
        proxy.drop()

        async def answered_again() -> bool:
            status, body = await post_message(
                http, stack.gateway, {"user_id": "fabio", "text": PRAZO, "message_id": uuid.uuid4().hex}, wait=2
            )
            return status == 200 and body["status"] == "answered"

        await eventually(answered_again, timeout=60, interval=0.5, what="a reply after the connections were dropped")
        await wait_ready(stack)
    finally:
        await proxy.close()


async def test_gateway_without_broker_answers_503_then_serves_when_it_is_back(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    proxy = FaultProxy(AMQP_PORT)
    gateway = await stack.start("gateway", AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    await stack.start("worker")
    status, problem = await post_message(http, gateway, {"user_id": "gil", "text": PRAZO})
    assert status == 503
    assert problem["status"] == 503 and "broker" in problem["detail"]
    async with http.post(f"{gateway.url}/v1/messages", json={"user_id": "gil", "text": PRAZO}) as response:
        assert response.headers["Retry-After"].isdigit()
    status, health = await get_json(http, gateway.url + "/monitoring/health")
    assert status == 503 and health["checks"]["rabbitmq"]["status"] == "down"
    monitor = await stack.start("monitor")

    async def counted_as_5xx() -> bool:
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        return bool(stats["errors"]["by_kind_5_minutes"].get("5xx", 0) >= 2)

    await eventually(counted_as_5xx, what="the 503 answers counted as 5xx errors")

    await proxy.start()
    try:

        async def serving() -> bool:
            status, body = await post_message(http, gateway, {"user_id": "gil", "text": PRAZO}, wait=5)
            return status == 200 and body["status"] == "answered"

        await eventually(serving, timeout=30, interval=0.3, what="the gateway to serve once the broker is back")
        status, health = await get_json(http, gateway.url + "/monitoring/health")
        assert status == 200, health
    finally:
        await proxy.close()
