"""SIGTERM: a worker stops taking work, finishes what it holds and leaves; nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter

import aiohttp

from tests.support import Stack, eventually, get_json, post_message
from tests.test_pipeline import PRAZO, read_events


async def test_sigterm_worker_finishes_in_flight_work_and_another_takes_over(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    await stack.start("gateway")
    monitor = await stack.start("monitor")
    conversation = f"term-{uuid.uuid4().hex}"
    total = 300
    connected = asyncio.Event()
    reader = asyncio.create_task(read_events(http, stack.gateway, conversation, total, connected, timeout=90))
    await asyncio.wait_for(connected.wait(), 10)
    for i in range(total):
        status, _ = await post_message(
            http, stack.gateway, {"user_id": "lia", "conversation_id": conversation, "text": f"{PRAZO} {i}"}
        )
        assert status == 202
    first = await stack.start("worker")

    async def some_answered() -> bool:
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        return bool(stats["messages"]["total"] > 0)

    await eventually(some_answered, what="the first replies")
    first.kill(signal.SIGTERM)
    assert first.process is not None
    assert await asyncio.to_thread(first.process.wait, 30) == 0, first.logs()
    await stack.start("worker")

    events = await reader
    assert Counter(event["message_id"] for event in events) == Counter({e["message_id"]: 1 for e in events})
    assert len(events) == total

    async def all_counted() -> bool:
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        return bool(stats["messages"]["total"] == total)

    await eventually(all_counted, what="each message counted once")
