"""Inbound messages, start to finish: every delivery ends acked, requeued or dead-lettered.

The order of the steps is what makes the promises of SPEC section 3 hold:
1. read what is known (a stored reply means a redelivery: hand it back again, generate nothing);
2. generate;
3. commit the reply, stats and memory in one Redis script that only the first writer wins;
4. publish the reply with confirm;
5. ack. A crash anywhere before 5 redelivers the message, and step 1 makes that harmless.

A shard's buffered deliveries are taken as a batch: generated one after another in order, then
committed in one Redis round trip, published (in order within each conversation) and acked
together. Same guarantees, far fewer round trips per message under load.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aio_pika.abc import AbstractIncomingMessage

from services.worker.engines.base import EngineRequest, ReplyEngine, Turn
from shared.broker import Broker
from shared.messages import InboundMessage, MessageFormatError, ReplyMessage, now_ms
from shared.store import REDIS_ERRORS, Store, Timings
from shared.telemetry import ConsumerSpans, describe_reply, engine_span, mark_current_failed

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 5.0


def backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF_S, 0.1 * 2**attempt))


@dataclass(frozen=True, slots=True)
class Ready:
    """A delivery whose reply is known: freshly generated (`timings` set) or stored earlier."""

    delivery: AbstractIncomingMessage
    message: InboundMessage
    reply: ReplyMessage
    timings: Timings | None = None


@dataclass(frozen=True, slots=True)
class EngineFailed:
    failures: int


@dataclass(frozen=True, slots=True)
class Processor:
    store: Store
    broker: Broker
    engine: ReplyEngine
    max_attempts: int

    @property
    def batch_limit(self) -> int:
        """An engine that reads the conversation's memory needs each turn committed before the
        next one is generated, so it works one message at a time."""
        return 1 if self.engine.uses_history else 64

    async def handle(self, deliveries: Sequence[AbstractIncomingMessage]) -> float | None:
        """Process deliveries of one shard, in order. Returns None when all are settled, or the
        back-off in seconds when one failed: the caller must then hand that one and everything
        after it back to the broker, in order, and take them again after the pause. Raises
        BROKER_ERRORS if the broker fails mid-way (nothing unacked is lost: it is redelivered)."""
        ready: list[Ready] = []
        with ConsumerSpans(deliveries) as spans:
            for delivery in deliveries:
                with spans.activate(delivery.message_id):
                    outcome = await self._prepare(delivery)
                if isinstance(outcome, EngineFailed):
                    await self._finish(ready, spans)
                    return backoff(outcome.failures)
                if outcome is not None:
                    ready.append(outcome)
            await self._finish(ready, spans)
        return None

    async def _prepare(self, delivery: AbstractIncomingMessage) -> Ready | EngineFailed | None:
        """Steps 1 and 2. None: the delivery was settled here (dead-lettered)."""
        try:
            message = InboundMessage.from_bytes(delivery.body)
        except MessageFormatError as exc:
            log.error("dead-lettering a malformed message: %s", exc)
            await self._dead_letter(delivery, "malformed")
            return None
        # The text as received, for debugging; masked like every log line (shared.logs.mask_pii).
        log.debug("generating a reply", extra={"channel": message.channel, "text": message.text})
        started = now_ms()
        state = await self._until_redis_answers(
            lambda: self.store.begin(
                message, redelivered=delivery.redelivered is True, with_history=self.engine.uses_history
            )
        )
        if state.stored_reply is not None:
            return Ready(delivery, message, state.stored_reply)
        if state.attempt > self.max_attempts:  # failed before and then its worker crashed
            await self._dead_letter(delivery, "dead_lettered")
            return None
        history = tuple(Turn(role=turn["role"], text=turn["text"]) for turn in state.history)  # type: ignore[arg-type]
        try:
            with engine_span(self.engine.name) as span:
                content = await self.engine.reply(EngineRequest(message.text, message.conversation_id, history))
                describe_reply(span, content.engine, content.confidence, content.handoff, content.sources)
        except Exception:
            log.exception("engine failed on message %s (attempt %d)", message.message_id, state.attempt)
            mark_current_failed("engine failed")
            failures = await self._until_redis_answers(lambda: self.store.record_failure(message.message_id))
            if failures < self.max_attempts:
                return EngineFailed(failures)
            log.error("message %s failed %d times; dead-lettered", message.message_id, failures)
            await self._dead_letter(delivery, "dead_lettered")
            return None
        finished = now_ms()
        reply = ReplyMessage(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            user_id=message.user_id,
            channel=message.channel,
            reply=content,
            latency_ms=finished - message.accepted_at_ms,
            gateway_id=message.gateway_id,
            metadata=message.metadata,
        )
        timings = Timings(
            queue_wait_ms=started - message.accepted_at_ms,
            processing_ms=finished - started,
            end_to_end_ms=finished - message.accepted_at_ms,
        )
        return Ready(delivery, message, reply, timings)

    async def _finish(self, ready: list[Ready], spans: ConsumerSpans) -> None:
        """Steps 3 to 5 for a batch: commit, publish, ack."""
        if not ready:
            return
        fresh = [(item.message, item.reply, item.timings) for item in ready if item.timings is not None]
        # One round trip for the batch: its span goes in the first message's trace.
        with spans.activate(ready[0].message.message_id):
            standing = iter(await self._until_redis_answers(lambda: self.store.commit(fresh)))
        replies = [next(standing) if item.timings is not None else item.reply for item in ready]
        await self._hand_back(replies, spans)
        for item in ready:
            await item.delivery.ack()
        for item, reply in zip(ready, replies, strict=True):
            if item.timings is not None:
                with spans.activate(reply.message_id):
                    log.info(
                        "message processed",
                        extra={
                            "message_id": reply.message_id,
                            "conversation_id": reply.conversation_id,
                            "engine": reply.reply.engine,
                            "processingTime": round(item.timings.processing_ms, 2),
                            "latency_ms": round(item.timings.end_to_end_ms, 2),
                        },
                    )

    async def _hand_back(self, replies: list[ReplyMessage], spans: ConsumerSpans) -> None:
        """Publish with confirm: one conversation's replies one after another (so they arrive in
        order), different conversations concurrently."""
        by_conversation: dict[str, list[ReplyMessage]] = defaultdict(list)
        for reply in replies:
            by_conversation[reply.conversation_id].append(reply)

        async def publish_in_order(conversation: list[ReplyMessage]) -> None:
            for reply in conversation:
                with spans.activate(reply.message_id):
                    await self._publish(reply)

        await asyncio.gather(*(publish_in_order(conversation) for conversation in by_conversation.values()))

    async def _publish(self, reply: ReplyMessage) -> None:
        names = self.broker.names
        await self.broker.publish(
            names.replies_exchange,
            names.reply_routing_key(reply.channel, reply.gateway_id, reply.conversation_id),
            reply.to_bytes(),
            message_id=reply.message_id,
            conversation_id=reply.conversation_id,
            # Web replies go to transient gateway queues and may find no listener; that is fine,
            # the reply is stored. Channel replies go to durable delivery queues.
            persistent=reply.channel != "web",
            mandatory=False,
        )

    async def _dead_letter(self, delivery: AbstractIncomingMessage, kind: str) -> None:
        mark_current_failed(kind)
        await delivery.reject(requeue=False)
        try:
            await self.store.record_error(kind)
        except REDIS_ERRORS as exc:
            log.error("error not counted (%s): %s", kind, exc)

    async def _until_redis_answers(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Redis down is not the message's fault: wait in place (keeping order and the delivery)
        rather than spend one of its attempts."""
        attempt = 0
        while True:
            try:
                return await operation()
            except REDIS_ERRORS as exc:
                if attempt == 0:
                    log.warning("Redis unavailable, holding the messages until it answers: %s", exc)
                attempt += 1
                await asyncio.sleep(backoff(attempt))
