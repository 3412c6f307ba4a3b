"""Statistics after a known load (issue 3, SPEC section 5): exact counts, percentiles within the
histogram's bucket error of the latencies the test saw, rolling windows, and a read whose cost does
not grow with the traffic."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from services.monitor.stats_reader import Summary, read_raw, summarize
from shared import stats
from shared.messages import InboundMessage
from shared.names import Names
from shared.store import Store
from tests.support import (
    PRAZO,
    REDIS_URL,
    TEST_SHARDS,
    Stack,
    eventually,
    get_json,
    post_message,
    publish_raw,
    stats_when,
    web_id,
)
from tests.support.pipeline import start_stack
from tests.support.servers import LocalRedis

BUCKET_RATIO = 2 ** (1 / stats.BUCKETS_PER_DOUBLING)  # a bucket's upper bound over its lower one


def within_bucket_error(estimate: float, latencies: list[float], q: float) -> bool:
    """The estimate of the q-quantile lies in the bucket span around the values of the ranks next
    to q*n (interpolation inside a bucket cannot leave it)."""
    ordered = sorted(latencies)
    rank = q * len(ordered)
    low = ordered[max(0, math.ceil(rank) - 1)]
    high = ordered[min(len(ordered) - 1, math.ceil(rank))]
    return low / BUCKET_RATIO - 0.01 <= estimate <= high * BUCKET_RATIO + 0.01


async def _logged_latency(redis: Redis, names: Names, conversation_id: str, message_id: str) -> float | None:
    for raw in await redis.lrange(names.conversation_log_key(conversation_id), 0, -1):
        entry = orjson.loads(raw)
        if entry["message_id"] == message_id:
            return float(entry["latency_ms"])
    return None


async def test_stats_after_a_known_load(stack: Stack, http: aiohttp.ClientSession) -> None:
    await start_stack(stack)
    names = Names(stack.namespace, TEST_SHARDS)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        # Older traffic, as the workers would have written it: 3 hours ago (inside the rolling 24 h),
        # 30 hours ago (outside it), 6 minutes ago (outside the 5-minute window); a user last seen 25 h ago.
        now = time.time()
        three_hours_ago = stats.slice_start(now - 3 * 3600, stats.HOUR_SECONDS)
        await redis.hset(names.stats_hour_key(three_hours_ago), mapping={stats.MESSAGES: 7, "channel:web": 7})
        await redis.hset(names.stats_hour_key(stats.slice_start(now - 30 * 3600, 3600)), stats.MESSAGES, 100)
        await redis.hset(names.stats_fine_key(stats.slice_start(now - 360, stats.FINE_SECONDS)), stats.MESSAGES, 50)
        await redis.zadd(names.users_key, {"web:long-gone": now - 25 * 3600})
        seen: list[float] = await _known_load(stack, http, redis, names)
    finally:
        await redis.aclose()

    body = await stats_when(
        http,
        stack.monitor,
        lambda body: body["messages"]["last_5_minutes"] >= 40 and body["users"]["active_24h"] >= 10,
    )
    messages = body["messages"]
    assert messages["last_minute"] == messages["last_5_minutes"] == len(seen) == 40
    # "today" is the day in BUSINESS_TIMEZONE (the default, São Paulo's)
    local = datetime.fromtimestamp(now, ZoneInfo("America/Sao_Paulo"))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    assert messages["today"] == 40 + (7 if three_hours_ago >= midnight else 0)
    assert messages["last_24h"] == 47
    assert messages["by_channel_24h"] == {"web": 30 + 7, "telegram": 10}
    assert body["users"]["active_24h"] == 8 + 2  # web users and telegram users; not the one from yesterday
    assert body["errors"]["total"] == body["errors"]["last_5_minutes"] == 0
    latency = body["latency_ms"]
    assert latency["count"] == 40
    assert latency["max"] == max(seen)
    assert abs(latency["avg"] - sum(seen) / len(seen)) < 0.05
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert within_bucket_error(latency[name], seen, q), (name, latency[name], sorted(seen))
    breakdown = body["latency_breakdown_ms"]
    assert breakdown["queue_wait"]["p50"] <= latency["p50"] * BUCKET_RATIO

    _, day = await get_json(http, stack.monitor.url + "/monitoring/stats/24h")
    assert day["period"] == "last_24h" and day["bucket_seconds"] == 3600
    series = day["series"]
    starts = [stats.slice_start(_epoch(point["start"]), 3600) for point in series]
    current_hour = stats.slice_start(time.time(), 3600)
    assert len(series) == 24 and starts == [current_hour - 3600 * back for back in range(23, -1, -1)]
    by_hour = {start: point for start, point in zip(starts, series, strict=True)}
    assert by_hour[three_hours_ago]["messages"] == 7
    # The load landed in the current hour (or, right at the turn of the hour, in the one before).
    assert by_hour[current_hour]["messages"] + by_hour.get(current_hour - 3600, {"messages": 0})["messages"] >= 40
    assert day["totals"] == {"messages": 47, "errors": 0, "users": 10}
    hour = by_hour[current_hour]
    if hour["messages"] == 40:
        assert hour["p50"] <= hour["p95"] <= hour["p99"]
        assert within_bucket_error(hour["p95"], seen, 0.95)


async def _known_load(stack: Stack, http: aiohttp.ClientSession, redis: Redis, names: Names) -> list[float]:
    """40 messages whose end-to-end latencies the test knows: 30 through the gateway (no more than
    the round trip the test timed around each), 10 put on the queue as if accepted 0.2-2 s earlier
    (at least that much). Each one's exact figure is the one the worker logged for it."""
    seen: list[float] = []

    async def through_gateway(i: int) -> None:
        started = time.perf_counter()
        status, body = await post_message(http, stack.gateway, {"user_id": f"web-{i % 8}", "text": PRAZO}, wait=10)
        round_trip = (time.perf_counter() - started) * 1000
        assert status == 200, body
        user = f"web-{i % 8}"
        logged = await _logged_latency(
            redis, names, web_id(user, body["conversation_id"]), web_id(user, body["message_id"])
        )
        assert logged is not None and 0 < logged <= round_trip
        assert body["latency_ms"] <= round_trip
        seen.append(logged)

    await asyncio.gather(*(through_gateway(i) for i in range(30)))

    backdated = [200.0 + 200 * i for i in range(10)]
    random.shuffle(backdated)
    for i, back_ms in enumerate(backdated):
        message = InboundMessage(
            message_id=f"tg-{i}",
            conversation_id=f"telegram:{i % 2}",
            user_id=f"tg-user-{i % 2}",
            text=PRAZO,
            channel="telegram",
            metadata={"chat_id": i % 2},
            accepted_at_ms=time.time() * 1000 - back_ms,
        )
        routing_key = str(names.shard_of(message.conversation_id))
        await publish_raw(stack.namespace, routing_key, message.to_bytes(), message_id=message.message_id)
        logged = await eventually(
            partial(_logged_latency, redis, names, message.conversation_id, message.message_id), what="answered"
        )
        assert back_ms <= logged < back_ms + 5000
        seen.append(logged)
    return seen


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.integration  # a private redis-server
async def test_reading_stats_costs_the_same_whatever_the_traffic(tmp_path: Path) -> None:
    """Count the commands Redis executes for one read, before and after 5000 messages' worth of
    counters (a Redis of the test's own, so nothing else is counted)."""
    async with LocalRedis(tmp_path) as local:
        redis = Redis.from_url(local.url, decode_responses=True)
        try:
            store = Store(redis, Names("cost", TEST_SHARDS))

            async def commands_for_one_read() -> tuple[int, Summary]:
                await redis.config_resetstat()
                raw = await read_raw(store)
                info = await redis.info("commandstats")
                calls = sum(int(v["calls"]) for k, v in info.items() if k != "cmdstat_info")
                return calls - 1, summarize(raw)  # less the CONFIG RESETSTAT itself

            empty_cost, empty = await commands_for_one_read()
            assert empty["messages"]["last_5_minutes"] == 0
            await _write_traffic(store, 5000)
            busy_cost, busy = await commands_for_one_read()
            assert busy["messages"]["last_5_minutes"] == 5000 and busy["latency_ms"]["count"] == 5000
            assert busy_cost == empty_cost
        finally:
            await redis.aclose()


async def _write_traffic(store: Store, count: int) -> None:
    """What the workers write per message: counters in the 10-second and hourly slices, the user."""
    now = time.time()
    async with store.redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            at = now - (i % 280)
            latency = 5 + (i % 97)
            for key in (
                store.names.stats_fine_key(stats.slice_start(at, 10)),
                store.names.stats_hour_key(stats.slice_start(at, 3600)),
            ):
                pipe.hincrby(key, stats.MESSAGES, 1)
                pipe.hincrby(key, f"{stats.E2E}:{stats.bucket_of(latency)}", 1)
            pipe.zadd(store.names.users_key, {f"web:user-{i % 300}": at})
        await pipe.execute()


async def test_today_is_the_business_time_zones_day() -> None:
    """ "today" begins at midnight in BUSINESS_TIMEZONE: at 23:30 in São Paulo (02:30 UTC, a UTC day
    already begun) it holds the São Paulo day's messages and users, which "since midnight UTC" cut."""
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    at = partial(_utc, 2026, 12)
    try:
        await redis.hset(names.stats_hour_key(int(at(6, 12))), stats.MESSAGES, 3)  # 09:00 in São Paulo
        await redis.hset(names.stats_hour_key(int(at(7, 1))), stats.MESSAGES, 5)  # 22:00 in São Paulo
        await redis.zadd(names.users_key, {"web:ana": at(6, 12)})
        store = Store(redis, names)
        local = summarize(await read_raw(store, ZoneInfo("America/Sao_Paulo"), now=at(7, 2.5)))
        utc = summarize(await read_raw(store, UTC, now=at(7, 2.5)))
        assert (local["messages"]["today"], local["users"]["today"]) == (8, 1)
        assert (utc["messages"]["today"], utc["users"]["today"]) == (5, 0)
        assert local["messages"]["last_24h"] == utc["messages"]["last_24h"] == 8
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)
        await redis.aclose()


def _utc(year: int, month: int, day: int, hours: float) -> float:
    return datetime(year, month, day, tzinfo=UTC).timestamp() + hours * 3600
