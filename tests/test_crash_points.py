"""Each crash point does real harm and the test asserts what survives (tests/support/faultproxy.py puts a
TCP proxy between one service and Redis or RabbitMQ; tests/support/servers.py starts private servers for
faults that would harm the shared ones)."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from services.gateway.admission import _ADMIT
from shared.broker import COPY_HEADER
from shared.messages import InboundMessage
from shared.names import Names
from shared.service import supervised
from tests.support import (
    AMQP_PORT,
    AMQP_URL,
    PRAZO,
    REDIS_PORT,
    REDIS_URL,
    TEST_SHARDS,
    Service,
    Stack,
    conversation_token,
    eventually,
    free_port,
    get_json,
    post_message,
    stats_when,
    web_id,
)
from tests.support.faultproxy import UP, FaultProxy
from tests.support.pipeline import wait_ready
from tests.support.servers import PrivateRabbit, PrivateRedis, have, wait_closed


@pytest.fixture
async def amqp_proxy() -> AsyncIterator[FaultProxy]:
    proxy = await FaultProxy(AMQP_PORT).start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[FaultProxy]:
    proxy = await FaultProxy(REDIS_PORT).start()
    try:
        yield proxy
    finally:
        await proxy.close()


def message(text: str = PRAZO, **fields: str) -> dict[str, str]:
    return {"user_id": f"u-{uuid.uuid4().hex[:8]}", "message_id": f"m-{uuid.uuid4().hex}", "text": text, **fields}


async def test_gateway_killed_while_its_publish_waits_for_the_confirm_the_retry_is_answered(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis, amqp_proxy: FaultProxy
) -> None:
    await stack.start("worker")
    await stack.start("monitor")
    doomed = await stack.start("gateway", AMQP_URL=amqp_proxy.url("amqp://guest:guest@", "/"))
    await wait_ready(stack)
    body = message()
    # Whatever the gateway sends the broker from now on is lost: its publish waits for a confirm.
    amqp_proxy.swallow(UP)
    posting = asyncio.create_task(post_message(http, doomed, body))
    claim_key = Names(stack.namespace, TEST_SHARDS).claim_key(web_id(body["user_id"], body["message_id"]))
    await eventually(lambda: redis.exists(claim_key), what="the claim")

    async def published() -> bool:
        return amqp_proxy.swallowed[UP] > 0

    await eventually(published, what="the publish sent (and swallowed)")
    doomed.kill(signal.SIGKILL)
    with pytest.raises(aiohttp.ClientError):
        await posting

    # The platform retries at another gateway: the claim left behind must not make it a duplicate.
    survivor = await stack.start("gateway")
    await wait_ready(stack)
    status, answer = await post_message(http, survivor, body, wait=25)
    assert status == 200, answer
    assert answer["status"] == "answered" and "duplicate" not in answer, answer


async def test_a_claim_whose_reply_is_lost_on_the_wire_is_accepted_not_a_duplicate(
    stack: Stack, http: aiohttp.ClientSession, redis_proxy: FaultProxy
) -> None:
    gateway = await stack.start("gateway", REDIS_URL=redis_proxy.url("redis://", "/0"))
    await stack.start("worker")
    await stack.start("monitor")
    await wait_ready(stack)
    status, _ = await post_message(http, gateway, message(), wait=10)  # the scripts are loaded now
    assert status == 200
    body = message()
    # Redis receives the claim and acts on it; its answer never arrives: redis-py sends it again.
    cut = redis_proxy.cut_after_sent(body["message_id"].encode())
    status, answer = await post_message(http, gateway, body, wait=10)
    assert cut.is_set()
    assert status == 200, answer
    assert answer["status"] == "answered" and "duplicate" not in answer, answer


async def test_a_second_copy_of_an_answered_message_gets_the_stored_reply_without_generating(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = await stack.start("gateway")
    worker = await stack.start("worker")
    await stack.start("monitor")
    await wait_ready(stack)
    body = message(conversation_id=f"copy-{uuid.uuid4().hex[:8]}")
    status, first = await post_message(http, gateway, body, wait=10)
    assert status == 200, first
    names = Names(stack.namespace, TEST_SHARDS)
    copy = InboundMessage(
        web_id(body["user_id"], body["message_id"]),
        web_id(body["user_id"], body["conversation_id"]),
        body["user_id"],
        body["text"],
    )

    # Web replies are pushed to the gateways over Redis: the one handed back again is heard there.
    redis = Redis.from_url(REDIS_URL)
    pushed = redis.pubsub(ignore_subscribe_messages=True)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await pushed.subscribe(names.conversation_push_channel(copy.conversation_id))
        channel = await connection.channel()
        inbound = await channel.get_exchange(names.inbound_exchange)
        # What a gateway publishes over a stale claim whose first publish may have been confirmed.
        await inbound.publish(
            aio_pika.Message(copy.to_bytes(), message_id=copy.message_id, headers={COPY_HEADER: True}),
            str(names.shard_of(copy.conversation_id)),
        )
        async with asyncio.timeout(20):
            async for heard in pushed.listen():
                again = orjson.loads(heard["data"])
                break
    finally:
        await connection.close()
        await pushed.aclose()
        await redis.aclose()
    assert again["message_id"] == copy.message_id
    assert again["reply"]["text"] == first["reply"]["text"]
    lines = worker.logs().splitlines()
    processed = [line for line in lines if '"message processed"' in line and body["message_id"] in line]
    assert len(processed) == 1, processed
    stats = await stats_when(http, stack.monitor, lambda body: body["messages"]["total"] >= 1)
    assert stats["messages"]["total"] == 1


@pytest.mark.skipif(not have("redis-server"), reason="needs redis-server for a private Redis")
async def test_redis_refusing_writes_holds_the_messages_and_nothing_is_dead_lettered(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    private = await PrivateRedis(tmp_path / "redis").start()
    try:
        stack.extra_env["REDIS_URL"] = private.url
        gateway = await stack.start("gateway")
        monitor = await stack.start("monitor")
        conversation = f"oom-{uuid.uuid4().hex[:8]}"
        ids = []
        for i in range(10):
            body = message(f"{PRAZO} {i}", conversation_id=conversation)
            status, answer = await post_message(http, gateway, body)
            assert status == 202
            ids.append((body["message_id"], answer["conversation_token"]))
        # Writes refused: OOM (the shipped noeviction policy) and, for every write of a script too,
        # NOREPLICAS (Redis lets a script whose first write is a DEL go on past maxmemory). MISCONF
        # and READONLY are alike: Redis unavailable, never the message's fault.
        await private.config_set(maxmemory_policy="noeviction", maxmemory="1", min_replicas_to_write="1")
        worker = await stack.start("worker")

        async def holding() -> bool:
            return "Redis unavailable, holding" in worker.logs()

        await eventually(holding, what="the worker holding messages")
        window_end = time.monotonic() + 6
        while time.monotonic() < window_end:
            status, problem = await post_message(http, gateway, message())
            assert status == 503, problem
            _, stats = await get_json(http, monitor.url + "/monitoring/stats")
            assert not stats["queue"]["dead_letters"], stats["queue"]
            await asyncio.sleep(0.25)
        await private.config_set(maxmemory="0", min_replicas_to_write="0")

        async def all_answered() -> bool:
            for message_id, token in ids:
                status, _ = await get_json(http, f"{gateway.url}/v1/messages/{message_id}?token={token}")
                if status != 200:
                    return False
            return True

        await eventually(all_answered, timeout=30, what="every held message answered")

        async def worker_alive() -> dict[str, Any] | None:
            _, health = await get_json(http, monitor.url + "/monitoring/health")
            workers: dict[str, Any] = health["checks"]["workers"]
            return workers if workers.get("alive") else None

        await eventually(worker_alive, timeout=20, what="the worker alive again in /monitoring/health")
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        assert not stats["queue"]["dead_letters"]
        assert worker.process is not None and worker.process.poll() is None
    finally:
        stack.stop_all()
        private.stop()


@pytest.mark.skipif(not have("rabbitmq-server"), reason="needs rabbitmq-server for a private broker")
async def test_sigterm_with_the_broker_stopped_exits_within_the_grace(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    grace = 3.0
    broker = await PrivateRabbit(tmp_path / "rabbit").start()
    try:
        stack.extra_env.update({"AMQP_URL": broker.url, "SHUTDOWN_GRACE_SECONDS": str(grace)})
        gateway = await stack.start("gateway")
        await stack.start("worker")
        await stack.start("monitor")
        await wait_ready(stack)
        status, _ = await post_message(http, gateway, message(), wait=10)
        assert status == 200
        broker.pause()
        started = time.monotonic()
        for service in stack.services:
            service.kill(signal.SIGTERM)

        async def stopped(service: Service) -> tuple[str, int | None, float]:
            assert service.process is not None
            code = await wait_closed(service.process, grace + 30)
            return service.name, code, time.monotonic() - started

        exits = await asyncio.gather(*(stopped(service) for service in stack.services))
        times = ", ".join(f"{name} {took:.1f}s" for name, _, took in exits)
        print(f"stop with the broker SIGSTOPped, grace {grace:.0f}s: {times}")
        assert [code for _, code, _ in exits] == [0, 0, 0], stack.logs()
        assert max(took for _, _, took in exits) < grace + 5, stack.logs()
    finally:
        stack.stop_all()
        broker.stop()


async def test_no_errors_counted_for_probes_at_start_nor_for_closed_event_streams(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    # A gateway whose broker is unreachable answers its readiness probe 503: that is no error.
    unready = await stack.start("gateway", AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    for _ in range(3):
        status, _ = await get_json(http, unready.url + "/monitoring/health")
        assert status == 503
    unready.stop()
    gateway = await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start("monitor")
    await wait_ready(stack)
    conversation = f"tabs-{uuid.uuid4().hex[:8]}"
    body = message(conversation_id=conversation)
    token = await conversation_token(stack.namespace, body["user_id"], conversation)
    for _ in range(20):
        url = f"{gateway.url}/v1/conversations/{conversation}/events?token={token}"
        async with http.get(url) as response:
            assert response.status == 200
            await response.content.readline()  # subscribed; then the browser tab is closed
    # A reply for the conversation makes the server write to whatever streams it still holds.
    status, _ = await post_message(http, gateway, body, wait=10)
    assert status == 200
    names = Names(stack.namespace, TEST_SHARDS)

    async def streams_ended() -> bool:
        keys = [key async for key in redis.scan_iter(match=names.heartbeat_key("gateway", "*"))]
        states = [orjson.loads(raw) for raw in await redis.mget(keys) if raw]
        return bool(states) and all(state.get("streaming") == 0 for state in states)

    await eventually(streams_ended, what="the closed streams' handlers to end")
    _, stats = await get_json(http, monitor.url + "/monitoring/stats")
    assert stats["errors"]["total"] == 0, stats["errors"]
    assert "unhandled error" not in gateway.logs()


async def test_250_concurrent_status_reads_are_all_answered(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    body = message()
    status, answer = await post_message(http, gateway, body, wait=10)
    assert status == 200
    url = f"{gateway.url}/v1/messages/{body['message_id']}?token={answer['conversation_token']}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as many:
        results = await asyncio.gather(*(get_json(many, url) for _ in range(250)))
    assert sorted({status for status, _ in results}) == [200], Counter(status for status, _ in results)


async def test_a_rate_limit_take_whose_reply_is_lost_is_taken_once(
    stack: Stack, http: aiohttp.ClientSession, redis_proxy: FaultProxy
) -> None:
    # One message a second, bursts of two: a take applied twice would refuse the second message.
    gateway = await stack.start("gateway", REDIS_URL=redis_proxy.url("redis://", "/0"), RATE_LIMIT_PER_USER="1")
    await stack.start("worker")
    await wait_ready(stack)
    first = message()
    status, _ = await post_message(http, gateway, first)  # the admission script is loaded now
    assert status == 202
    cut = redis_proxy.cut_after_sent(hashlib.sha1(_ADMIT.encode()).hexdigest().encode())
    status, answer = await post_message(http, gateway, message(user_id=first["user_id"]))
    assert cut.is_set()
    assert status == 202, answer


async def test_a_crashed_background_loop_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")

    await asyncio.wait_for(supervised("flaky", flaky, restart_delay_s=0.01), 5)
    assert runs == [0, 1, 2]
    crashes = [record for record in caplog.records if "background loop flaky crashed" in record.getMessage()]
    assert len(crashes) == 2 and all(record.exc_info for record in crashes)
