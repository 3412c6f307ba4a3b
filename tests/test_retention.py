"""RETENTION_DAYS (issue 23): what customers wrote is removed once older than the period, by one
monitor at a time, with an injected clock; aggregated statistics stay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from shared import conversations, unanswered
from shared.broker import Broker
from shared.names import Names
from shared.privacy import deadletters
from shared.privacy.retention import Retention
from tests.support import AMQP_URL, TEST_SHARDS, new_namespace, purge_namespace

DAY = 86_400
NOW = 1_900_000_000.0  # the injected clock's "now"


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    names = Names(new_namespace(), TEST_SHARDS)
    broker = Broker((AMQP_URL,), names, "test-retention")
    broker.start()
    try:
        await asyncio.wait_for(broker.wait_ready(), 30)
        yield broker
    finally:
        await broker.close()
        await purge_namespace(names.namespace)


def entry(text: str, at: float) -> bytes:
    return orjson.dumps({"message_id": text, "text": text, "accepted_at": at, "replied_at": at})


async def seed(redis: Redis, names: Names) -> None:
    idle, active = "whatsapp:1:5511900000001", "whatsapp:1:5511900000002"
    await redis.rpush(names.conversation_log_key(idle), entry("idle-old", NOW - 5 * DAY))
    await redis.rpush(
        names.conversation_log_key(active),
        entry("active-old", NOW - 4 * DAY),
        entry("active-older-too", NOW - 3.5 * DAY),
        entry("active-new", NOW - DAY),
    )
    await redis.zadd(names.conversations_key, {idle: NOW - 5 * DAY, active: NOW - DAY})
    old_hour, new_hour = int((NOW - 5 * DAY) // 3600), int((NOW - DAY) // 3600)
    for hour, question in ((old_hour, "old question"), (new_hour, "new question")):
        await redis.hset(unanswered.counts_key(names, hour), f"{question}\x1ffallback", 1)
        await redis.hset(unanswered.examples_key(names, hour), f"{question}\x1ffallback", question.upper())
    await redis.zadd(names.unanswered_handled_key, {"q\x1fold handled": NOW - 5 * DAY, "q\x1fnew handled": NOW})
    await redis.zadd(names.kb_suggestions_key, {"e1\x1fold suggestion": NOW - 5 * DAY, "e1\x1fnew": NOW})
    await redis.hset(names.kb_suggestion_examples_key, mapping={"e1\x1fold suggestion": "x", "e1\x1fnew": "y"})
    await redis.hset(names.stats_total_key, "messages", 42)


async def test_retention_sweeps_what_is_older_than_the_period(broker: Broker, redis: Redis) -> None:
    names = broker.names
    await seed(redis, names)
    for message_id, died in (("dead-old", NOW - 5 * DAY), ("dead-new", NOW - DAY)):
        headers = {deadletters.DIED_AT_HEADER: died}
        await broker.publish("", names.dead_letter_queue, b"{}", message_id=message_id, headers=headers)
    clock = [NOW]
    monitors = [Retention(redis, names, broker, days=3, clock=lambda: clock[0]) for _ in range(2)]

    # Two monitors at once: one sweeps, the other finds the lock taken.
    first, second = await asyncio.gather(*(m.sweep() for m in monitors))
    removed = first or second
    assert (first is None) != (second is None) and removed is not None
    assert removed == {"conversation_logs": 3, "unanswered_questions": 4, "rating_comments": 0, "dead_letters": 1}

    active = "whatsapp:1:5511900000002"
    log = [orjson.loads(raw)["text"] for raw in await redis.lrange(names.conversation_log_key(active), 0, -1)]
    assert log == ["active-new"]
    assert not await redis.exists(names.conversation_log_key("whatsapp:1:5511900000001"))
    assert await redis.zrange(names.conversations_key, 0, -1) == [active]
    rows = await unanswered.report(redis, names, now=NOW)
    assert [row.question for row in rows] == ["new question"]
    assert await redis.zrange(names.unanswered_handled_key, 0, -1) == ["q\x1fnew handled"]
    assert await redis.hgetall(names.kb_suggestion_examples_key) == {"e1\x1fnew": "y"}
    assert [letter.message_id for letter in await deadletters.look(broker, redis)] == ["dead-new"]
    assert await redis.hget(names.stats_total_key, "messages") == "42"  # statistics stay

    # A day later the young dead letter is old too; the lock was released after the first sweep.
    clock[0] = NOW + 2.5 * DAY
    again = await monitors[0].sweep()
    assert again is not None and again["dead_letters"] == 1 and again["conversation_logs"] == 1
    assert await deadletters.look(broker, redis) == []


async def test_passes_over_the_dead_letters_take_turns(broker: Broker, redis: Redis) -> None:
    """An erasure, a look and a retention sweep at once: each sees the whole queue, one after the other."""
    names = broker.names
    for n in range(20):
        headers = {deadletters.DIED_AT_HEADER: NOW - (5 if n % 2 else 1) * DAY}
        await broker.publish("", names.dead_letter_queue, b"{}", message_id=f"d{n}", headers=headers)

    def odd(letter: deadletters.Letter) -> bool:
        return int(letter.message_id[1:]) % 2 == 1

    looked, swept, again = await asyncio.gather(
        deadletters.look(broker, redis), deadletters.sweep(broker, redis, odd), deadletters.look(broker, redis)
    )
    assert sorted(letter.message_id for letter in swept) == sorted(f"d{n}" for n in range(1, 20, 2))
    for seen in (looked, again):  # before the sweep, or after it: never half of it
        assert len(seen) in (10, 20)
    left = await deadletters.look(broker, redis)
    assert sorted(letter.message_id for letter in left) == sorted(f"d{n}" for n in range(0, 20, 2))


async def test_rating_comments_older_than_the_period_go(redis: Redis) -> None:
    """The customers' comments after a rating are their own words: each ages out by RETENTION_DAYS,
    though new comments keep renewing the list's expiry; the ratings' counts stay."""
    names = Names(new_namespace(), TEST_SHARDS)
    keys = conversations.Keys(names)
    try:

        def comment(text: str, at: float) -> bytes:
            return orjson.dumps(
                {"conversation": "telegram:42", "score": 5, "handled_by": "bot", "text": text, "at": at}
            )

        # As the worker writes them: the newest pushed to the front.
        for text, at in (("oldest", NOW - 6 * DAY), ("old", NOW - 4 * DAY), ("recent", NOW - 2 * DAY), ("new", NOW)):
            await redis.lpush(keys.comments, comment(text, at))
        await redis.hset(keys.totals, "csat:5:bot", 4)
        retention = Retention(redis, names, None, days=3, clock=lambda: NOW)

        removed = await retention.sweep()
        assert removed == {"conversation_logs": 0, "unanswered_questions": 0, "rating_comments": 2}
        left = await conversations.Conversations(redis, names).read_comments(10)
        assert [c["text"] for c in left] == ["new", "recent"]
        assert await redis.hget(keys.totals, "csat:5:bot") == "4"
        again = await retention.sweep()
        assert again is not None and again["rating_comments"] == 0
    finally:
        await purge_namespace(names.namespace)
