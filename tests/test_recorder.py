"""Statistics counted in the process and flushed in batches (shared/recorder.py): what the monitor
reads back is what was recorded, each batch lands once, and nothing is written per message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from services.monitor.stats_reader import read_raw, summarize
from services.worker.commit import Committer, Timings
from shared import stats
from shared.messages import ReplyContent
from shared.names import Names
from shared.recorder import _FLUSH, FORGET_KEEP_S, FORGET_MARGIN_S, Recorder, forget
from shared.store import Store, create_redis
from tests.support import TEST_SHARDS, eventually, free_port, purge_namespace
from tests.support.commits import commit_of, message
from tests.support.redis_monitor import monitoring

ANSWER = ReplyContent(text="Cinco dias.", engine="kb", confidence=0.9, sources=("prazo",))
NOW = 1_790_000_000.0  # a fixed clock: the slices written are known


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    try:
        yield names
    finally:
        await purge_namespace(names.namespace)


def _counts(latency_ms: float, user_channel: str = "web") -> stats.ReplyCounts:
    return stats.ReplyCounts(channel=user_channel, end_to_end_ms=latency_ms, queue_wait_ms=1.0, processing_ms=2.0)


async def test_what_is_recorded_reaches_the_monitor_with_one_flush(redis: Redis, names: Names) -> None:
    recorder = Recorder(redis, names, clock=lambda: NOW)
    # The first flush into a Redis that never ran the script reloads it (NOSCRIPT, then EVALSHA
    # again); load it first, so the commands counted below are those of any later flush.
    await redis.script_load(_FLUSH)
    latencies = [12.5, 80.25, 40.0]
    async with monitoring(names.namespace) as commands:
        for i, ms in enumerate(latencies):
            recorder.reply(_counts(ms, "web" if i else "telegram"))
            recorder.seen(names.users_key, f"web:user-{i % 2}", keep_s=3600)
        assert await redis.exists(names.stats_total_key) == 0  # recording wrote nothing
        assert await recorder.flush()
        end = f"{names.namespace}:end"
        await redis.exists(end)

        async def seen_the_end() -> bool:  # MONITOR streams in order: the flush is in before it
            return any(end in command for command in commands.seen)

        await eventually(seen_the_end, timeout=5, what="the marker command")
    # One call for everything recorded (between the two reads of the test).
    assert [c.split(" ")[0] for c in commands.seen] == ["EXISTS", "EVALSHA", "EXISTS"]

    summary = summarize(await read_raw(Store(redis, names), now=NOW + 1))
    assert summary["messages"]["total"] == summary["messages"]["last_minute"] == 3
    assert summary["messages"]["by_channel_24h"] == {"web": 2, "telegram": 1}
    assert summary["users"]["active_24h"] == 2
    latency = summary["latency_ms"]
    assert latency["count"] == 3 and latency["max"] == 80.25
    assert latency["avg"] == round(sum(latencies) / 3, 2)
    assert summary["latency_breakdown_ms"]["processing"]["p50"] > 0  # from the 10-second slices
    (fine, _), (hour, _) = stats.slice_keys(names, NOW)
    # The breakdown is read over 5 minutes only: the hourly slices do without its buckets.
    fine_fields = [str(name) for name in await redis.hkeys(fine)]
    hour_fields = [str(name) for name in await redis.hkeys(hour)]
    assert any(name.startswith(stats.QUEUE_WAIT + ":") for name in fine_fields)
    assert not [name for name in hour_fields if name.partition(":")[0] in stats.FINE_ONLY]
    assert await recorder.flush()  # nothing new: nothing more counted
    assert summarize(await read_raw(Store(redis, names), now=NOW + 1))["messages"]["total"] == 3


async def test_a_flush_redis_did_not_take_is_sent_again_and_counted_once(redis: Redis, names: Names) -> None:
    unreachable = create_redis(f"redis://127.0.0.1:{free_port()}/0")
    recorder = Recorder(unreachable, names, clock=lambda: NOW)
    try:
        recorder.count(stats.MESSAGES, total=True)
        assert not await recorder.flush()
        recorder.count(stats.MESSAGES, 2, total=True)  # recorded while the first batch waits
    finally:
        await unreachable.aclose()
    recorder.redis = redis
    assert await recorder.flush()
    assert await redis.hget(names.stats_total_key, stats.MESSAGES) == "3"


async def test_a_resent_flush_is_applied_once(redis: Redis, names: Names) -> None:
    """redis-py sends a command again when its answer was lost: the flush's token keeps it once."""
    recorder = Recorder(redis, names, clock=lambda: NOW)
    recorder.count(stats.MESSAGES, total=True)
    keys, payload = recorder._batch.call(NOW, names.forgotten_key)
    for _ in range(2):
        await recorder._send("the-same-token", keys, payload)
    assert await redis.hget(names.stats_total_key, stats.MESSAGES) == "1"


async def test_a_committed_reply_is_counted_once_and_a_redelivery_not_at_all(redis: Redis, names: Names) -> None:
    recorder = Recorder(redis, names, clock=lambda: NOW)
    committer = Committer(redis, names, recorder=recorder)
    first = commit_of(message("c-count"), ANSWER)
    await committer.commit_all([first])
    # Another delivery of the same message, generated again: the stored reply stands, uncounted.
    again = replace(first, timings=Timings(5.0, 6.0, 30.0), reply=replace(first.reply, latency_ms=30.0))
    (standing,) = await committer.commit_all([again])
    assert standing == first.reply
    # The same commit sent again after its answer was lost: the stored reply is its own, counted
    # now (the lost call counted nothing).
    lost = commit_of(message("c-lost"), ANSWER)
    await committer._run([committer._call(lost, NOW, with_silenced=False)])
    (standing,) = await committer.commit_all([lost])
    assert standing == lost.reply
    assert await recorder.flush()
    summary = summarize(await read_raw(Store(redis, names), now=NOW + 1))
    assert summary["messages"]["total"] == 2
    assert summary["users"]["active_24h"] == 1  # "ana" (tests.support.commits)


async def test_the_loop_flushes_on_its_own_and_once_more_when_stopped(redis: Redis, names: Names) -> None:
    recorder = Recorder(redis, names)
    running = asyncio.create_task(recorder.run(interval_s=0.05))
    recorder.count(stats.MESSAGES, total=True)

    async def counted() -> str | None:
        value = await redis.hget(names.stats_total_key, stats.MESSAGES)
        return None if value is None else str(value)

    await eventually(counted, timeout=10, what="the loop's flush")
    recorder.count(stats.MESSAGES, total=True)
    running.cancel()  # a clean stop: the last flush still goes out
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await counted() == "2"


async def test_memory_and_log_get_their_ttl_when_made_and_renewed_by_the_flush(redis: Redis, names: Names) -> None:
    """The commit sets their time to live only when it makes them; the flush after each message
    renews it, once for all the messages of that second."""
    recorder = Recorder(redis, names)
    committer = Committer(redis, names, recorder=recorder)
    memory, log = names.memory_key("c-ttl"), names.conversation_log_key("c-ttl")
    await committer.commit_all([commit_of(message("c-ttl"), ANSWER)])
    made = committer.settings.memory_ttl_s
    assert 0 < await redis.ttl(memory) <= made and await redis.ttl(log) > made
    for key in (memory, log):
        await redis.expire(key, 100)  # as if its last renewal were long ago
    async with monitoring(names.namespace) as commands:
        await committer.commit_all([commit_of(message("c-ttl"), ANSWER) for _ in range(3)])
        assert await redis.ttl(memory) <= 100 and await redis.ttl(log) <= 100  # not renewed per message
        assert await recorder.flush()
        assert await redis.ttl(memory) > 100 and await redis.ttl(log) > 100
    assert not [c for c in commands.seen if c.startswith("EXPIRE")]  # the flush's are inside its script


async def test_a_member_erased_before_the_flush_is_not_written_back(redis: Redis, names: Names) -> None:
    """An operator's erasure runs in the monitor while a worker still holds the customer among the
    users seen in its next flush: that flush must not bring them back, but a later visit counts."""
    clock = [NOW]
    recorder = Recorder(redis, names, clock=lambda: clock[0])
    recorder.seen(names.users_key, "web:ana", 86400)
    recorder.seen(names.users_key, "web:bruno", 86400)
    recorder.seen(names.conversations_key, "web:ana:chat", 86400)
    assert await forget(redis, names, names.users_key, ["web:ana"], now=NOW + 1) == (0, 0)  # not flushed yet
    await forget(redis, names, names.conversations_key, ["web:ana:chat"], now=NOW + 1)
    assert await recorder.flush()
    assert await redis.zrange(names.users_key, 0, -1) == ["web:bruno"]
    assert await redis.zrange(names.conversations_key, 0, -1) == []
    dump = str(await redis.zrange(names.forgotten_key, 0, -1)) + str(await redis.keys(f"{names.key_prefix}:*"))
    assert "ana" not in dump  # only the members' digests are kept, for FORGET_KEEP_S
    assert 0 < await redis.ttl(names.forgotten_key) <= FORGET_KEEP_S

    clock[0] = NOW + FORGET_MARGIN_S + 2  # the customer comes back after the erasure
    recorder.seen(names.users_key, "web:ana", 86400)
    assert await recorder.flush()
    assert await redis.zrange(names.users_key, 0, -1) == ["web:bruno", "web:ana"]
