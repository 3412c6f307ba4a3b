"""Counts and latencies in Redis, read back by the monitor (SPEC section 5)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp

from shared import stats
from tests.support import PRAZO, Stack, get_json, post_message, purge_namespace, stats_when
from tests.support.pipeline import start_stack


async def test_after_n_messages_stats_count_exactly_n(stack: Stack, http: aiohttp.ClientSession) -> None:
    await start_stack(stack)
    total = 25
    measured: list[float] = []

    async def one(i: int) -> None:
        started = time.perf_counter()
        status, body = await post_message(http, stack.gateway, {"user_id": f"user-{i % 5}", "text": PRAZO}, wait=10)
        measured.append((time.perf_counter() - started) * 1000)
        assert status == 200, body

    await asyncio.gather(*(one(i) for i in range(total)))
    body = await stats_when(
        http, stack.monitor, lambda body: body["messages"]["total"] >= total and body["users"]["active_24h"] >= 5
    )
    messages = body["messages"]
    assert messages["total"] == total
    assert messages["today"] == total or _just_after_midnight()
    assert messages["last_5_minutes"] == total
    assert messages["last_minute"] == total
    assert body["users"]["active_24h"] == 5
    assert body["errors"]["total"] == 0
    latency = body["latency_ms"]
    assert latency["count"] == total
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # End to end inside the system can only be shorter than what the client measured around it.
    assert latency["max"] <= max(measured) * (1 + 0.1)
    assert {s["name"] for s in body["services"]} == {"gateway", "worker", "monitor"}
    assert body["queue"]["depth"] == 0 and body["queue"]["dead_letters"] == 0

    _, day = await get_json(http, stack.monitor.url + "/monitoring/stats/24h")
    assert day["period"] == "last_24h" and day["bucket_seconds"] == 3600
    assert day["totals"]["messages"] == total
    current_hour = stats.slice_start(time.time(), 3600)
    last = day["series"][-1]
    assert last["messages"] == total or _just_after_the_hour(current_hour)
    assert sum(point["messages"] for point in day["series"]) == total
    assert last["p50"] <= last["p95"] <= last["p99"]


def _just_after_midnight() -> bool:
    """In BUSINESS_TIMEZONE (São Paulo's by default), where "today" begins."""
    local = datetime.now(ZoneInfo("America/Sao_Paulo"))
    return local.hour == 0 and local.minute == 0


def _just_after_the_hour(hour_start: int) -> bool:
    return time.time() - hour_start < 60


async def test_two_namespaces_never_see_each_other(stack: Stack, http: aiohttp.ClientSession) -> None:
    await start_stack(stack)
    other = Stack(f"t{uuid.uuid4().hex[:12]}", stack.tmp / "other")
    other.tmp.mkdir()
    try:
        await start_stack(other)
        conversation = f"shared-name-{uuid.uuid4().hex}"
        message_id = uuid.uuid4().hex
        for target in (stack, other):
            # The same ids in both: neither a duplicate of the other nor answered by the other's workers.
            status, body = await post_message(
                http,
                target.gateway,
                {"user_id": "ivo", "conversation_id": conversation, "message_id": message_id, "text": PRAZO},
                wait=10,
            )
            assert status == 200 and "duplicate" not in body, body
        status, _ = await post_message(http, stack.gateway, {"user_id": "ivo", "text": PRAZO}, wait=10)
        assert status == 200
        mine = await stats_when(http, stack.monitor, lambda body: body["messages"]["total"] >= 2)
        theirs = await stats_when(http, other.monitor, lambda body: body["messages"]["total"] >= 1)
        assert mine["messages"]["total"] == 2
        assert theirs["messages"]["total"] == 1
        assert {s["instance"] for s in mine["services"]}.isdisjoint({s["instance"] for s in theirs["services"]})
    finally:
        other.stop_all()

        await purge_namespace(other.namespace)
