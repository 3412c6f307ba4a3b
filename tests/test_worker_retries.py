"""Retries and dead-lettering, with an engine that fails on purpose.

The worker runs in-process (its real app, consumer and processor against the real RabbitMQ and
Redis); only the reply engine is replaced, by one that fails for chosen texts.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import pytest

from services.worker.engines.base import EngineRequest
from shared.broker import DELIVERY_LIMIT
from shared.messages import InboundMessage, ReplyContent
from shared.names import Names
from tests.support import AMQP_URL, TEST_SHARDS, Service, Stack, eventually, get_json, post_message, publish_raw
from tests.support.pipeline import worker_in_process

ALWAYS = "this always fails"
TWICE = "this fails twice"


class FlakyEngine:
    name = "flaky"
    uses_history = False

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def reply(self, request: EngineRequest) -> ReplyContent:
        self.calls[request.text] += 1
        if request.text == ALWAYS or (request.text == TWICE and self.calls[TWICE] <= 2):
            raise RuntimeError(f"engine failure for {request.text!r}")
        return ReplyContent(text=f"ok: {request.text}", engine=self.name, confidence=1.0)

    def may_be_choice(self, text: str) -> bool:
        return False

    async def close(self) -> None:
        return None


@pytest.fixture
async def flaky_worker(stack: Stack) -> AsyncIterator[FlakyEngine]:
    engine = FlakyEngine()
    async with worker_in_process(stack.env(MAX_ATTEMPTS="3"), engine):
        yield engine


async def post_all(
    http: aiohttp.ClientSession, gateway: Service, user_id: str, conversation: str, texts: tuple[str, ...]
) -> None:
    """One conversation's messages, each accepted (202) before the next is sent."""
    for text in texts:
        status, _ = await post_message(
            http, gateway, {"user_id": user_id, "conversation_id": conversation, "text": text}
        )
        assert status == 202


async def settled(http: aiohttp.ClientSession, monitor: Service, *, answered: int, what: str) -> dict[str, Any]:
    """The statistics once `answered` messages are answered and one is dead-lettered."""

    async def counted() -> dict[str, Any] | None:
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        return stats if stats["messages"]["total"] == answered and stats["queue"]["dead_letters"] == 1 else None

    return await eventually(counted, timeout=30, what=what)


async def test_failing_message_is_retried_then_dead_lettered_and_the_conversation_goes_on(
    stack: Stack, flaky_worker: FlakyEngine, http: aiohttp.ClientSession
) -> None:
    gateway = await stack.start("gateway")
    monitor = await stack.start("monitor")
    await post_all(http, gateway, "joao", "flaky-conversation", (ALWAYS, TWICE, "after the failures"))
    stats = await settled(http, monitor, answered=2, what="two answers and one dead letter")
    assert flaky_worker.calls[ALWAYS] == 3  # MAX_ATTEMPTS
    assert flaky_worker.calls[TWICE] == 3  # two failures, then the answer
    assert stats["errors"]["total"] == 1
    assert stats["errors"]["last_5_minutes"] == 1
    assert stats["errors"]["by_kind_5_minutes"] == {"dead_lettered": 1}

    # The dead letter is the original message, intact, for an operator to inspect or replay.
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{stack.namespace}.dead-letters", passive=True)
        message = await queue.get(timeout=5)
        assert message is not None and ALWAYS.encode() in message.body
        await message.nack(requeue=True)


BUG = "this trips a bug outside the engine"


class BuggyEngine(FlakyEngine):
    """An engine whose replies are fine, but whose choice check (run before the reply, outside the
    engine's own failure handling) raises for one text: a bug anywhere in the worker's handling."""

    def may_be_choice(self, text: str) -> bool:
        if BUG in text:
            raise ValueError("a bug in the worker's handling of this message")
        return False


async def test_a_message_that_trips_a_bug_is_dead_lettered_after_max_attempts_not_retried_forever(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """SPEC 3: a message that keeps failing goes to the dead-letter queue after a bounded number of
    attempts and counts as an error, wherever in the worker it fails; the conversation goes on."""
    engine = BuggyEngine()
    async with worker_in_process(stack.env(MAX_ATTEMPTS="3"), engine):
        gateway = await stack.start("gateway")
        monitor = await stack.start("monitor")
        await post_all(http, gateway, "ana", "buggy-conversation", (BUG, "after the bug"))
        stats = await settled(http, monitor, answered=1, what="the buggy message dead-lettered, the next answered")
        assert stats["errors"]["total"] == 1
        assert stats["errors"]["by_kind_5_minutes"] == {"dead_lettered": 1}
        assert engine.calls["after the bug"] == 1


async def test_the_brokers_last_delivery_of_a_message_that_kept_killing_its_worker_is_dead_lettered_and_counted(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A message whose every delivery killed its worker (no failure is recorded then) comes back
    until the queue's delivery limit; the broker would dead-letter it after one more return by
    itself, unseen by the statistics. Its last delivery (x-delivery-count at the limit) is
    dead-lettered by the worker instead, counted as an error (SPEC 3)."""
    await stack.start("worker", KB_EMBEDDINGS="off")
    monitor = await stack.start("monitor")
    doomed = InboundMessage(f"doomed-{uuid.uuid4().hex[:8]}", "doomed-conversation", "bia", "Qual o prazo de entrega?")
    names = Names(stack.namespace, TEST_SHARDS)
    await publish_raw(
        stack.namespace,
        str(names.shard_of(doomed.conversation_id)),
        doomed.to_bytes(),
        message_id=doomed.message_id,
        headers={"x-delivery-count": DELIVERY_LIMIT},
    )

    async def dead_lettered() -> dict[str, Any] | None:
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        return stats if stats["queue"]["dead_letters"] == 1 and stats["errors"]["total"] == 1 else None

    stats = await eventually(dead_lettered, timeout=30, what="the last delivery dead-lettered and counted")
    assert stats["errors"]["by_kind_5_minutes"] == {"dead_lettered": 1}
    assert stats["messages"]["total"] == 0
