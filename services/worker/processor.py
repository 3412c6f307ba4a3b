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

With DEBOUNCE_MS, the messages of one conversation accepted within that window of the first (a
customer typing a question in several lines) are one unit: the engine answers their joined text
once, the last message gets the reply and the others are committed as merged into it (stored,
counted, logged, acked; a request waiting on one gets the combined reply with `merged_into`).

The reply policy (handoff to a human, silence while a human has the conversation, `/reset`) is
applied by the commit script, atomically, so a reply generated just before a handoff began is
stored silenced and never sent.
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
from shared.messages import InboundMessage, MessageFormatError, ReplyContent, ReplyMessage, now_ms
from shared.metrics import WorkerMetrics
from shared.store import REDIS_ERRORS, SILENT_REPLY, Commit, Store, Timings
from shared.telemetry import ConsumerSpans, describe_reply, engine_span, mark_current_failed

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 5.0
# A delivery and its message (None when the body is not one of our messages).
Parsed = tuple[AbstractIncomingMessage, InboundMessage | None]


def backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF_S, 0.1 * 2**attempt))


@dataclass(frozen=True, slots=True)
class Ready:
    """A delivery whose reply is known: freshly generated (`commit` set) or stored earlier."""

    delivery: AbstractIncomingMessage
    message: InboundMessage
    reply: ReplyMessage
    commit: Commit | None = None


@dataclass(frozen=True, slots=True)
class EngineFailed:
    failures: int


@dataclass(frozen=True, slots=True)
class Processor:
    store: Store
    broker: Broker
    engine: ReplyEngine
    max_attempts: int
    metrics: WorkerMetrics
    debounce_ms: int = 0

    @property
    def batch_limit(self) -> int:
        """An engine that reads the conversation's memory needs each turn committed before the
        next one is generated, so it works one message at a time (unless bursts are merged: then
        it takes what is buffered, and commits after each unit)."""
        return 1 if self.engine.uses_history and not self.debounce_ms else 64

    def debounce_delay(self, delivery: AbstractIncomingMessage) -> float:
        """Seconds to wait, before taking a batch that starts with `delivery`, for the rest of its
        burst: until DEBOUNCE_MS after it was accepted (nothing for a backlog or a redelivery)."""
        if not self.debounce_ms or delivery.redelivered:
            return 0.0
        try:
            accepted = InboundMessage.from_bytes(delivery.body).accepted_at_ms
        except MessageFormatError:
            return 0.0
        # Clamped: the gateway's clock may be ahead of ours.
        return min(self.debounce_ms, max(0.0, accepted + self.debounce_ms - now_ms())) / 1000.0

    async def handle(self, deliveries: Sequence[AbstractIncomingMessage]) -> float | None:
        """Process deliveries of one shard, in order. Returns None when all are settled, or the
        back-off in seconds when one failed: the caller must then hand that one and everything
        after it back to the broker, in order, and take them again after the pause. Raises
        BROKER_ERRORS if the broker fails mid-way (nothing unacked is lost: it is redelivered)."""
        ready: list[Ready] = []
        with ConsumerSpans(deliveries) as spans:
            for unit in bursts([_parse(delivery) for delivery in deliveries], self.debounce_ms):
                with spans.activate(unit[-1][0].message_id):
                    outcome = await self._prepare(unit)
                if isinstance(outcome, EngineFailed):
                    await self._finish(ready, spans)
                    await _ack_each(ready)
                    return backoff(outcome.failures)
                ready.extend(outcome)
                if self.engine.uses_history:
                    # The next unit may be this conversation's next turn: it must read this one.
                    await self._finish(ready, spans)
                    await _ack_each(ready)
                    ready = []
            await self._finish(ready, spans)
            await _ack_whole_batch(ready)
        return None

    async def _prepare(self, unit: Sequence[Parsed]) -> list[Ready] | EngineFailed:
        """Steps 1 and 2 for one unit (a message, or a burst answered by its last message's reply).
        Nothing ready: the delivery was settled here (dead-lettered)."""
        delivery, message = unit[-1]
        if message is None:
            await self._dead_letter(delivery, "malformed")
            return []
        messages = [m for _, m in unit if m is not None]
        text = "\n".join(m.text for m in messages)
        # The text as received, for debugging; masked like every log line (shared.logs.mask_pii).
        log.debug("generating a reply", extra={"channel": message.channel, "text": text})
        started = now_ms()
        state = await self._until_redis_answers(
            lambda: self.store.begin(
                message, redelivered=delivery.redelivered is True, with_history=self.engine.uses_history
            )
        )
        if state.stored_reply is not None:
            return [Ready(delivery, message, state.stored_reply)]
        if state.attempt > self.max_attempts:  # failed before and then its worker crashed
            await self._dead_letter(delivery, "dead_lettered")
            return []
        if state.handed_off:
            content = SILENT_REPLY  # a human has the conversation: generating would only cost
        else:
            history = tuple(Turn(role=turn["role"], text=turn["text"]) for turn in state.history)  # type: ignore[arg-type]
            try:
                with engine_span(self.engine.name) as span:
                    content = await self.engine.reply(EngineRequest(text, message.conversation_id, history))
                    describe_reply(span, content.engine, content.confidence, content.handoff, content.sources)
            except Exception:
                log.exception("engine failed on message %s (attempt %d)", message.message_id, state.attempt)
                mark_current_failed("engine failed")
                failures = await self._until_redis_answers(lambda: self.store.record_failure(message.message_id))
                if failures < self.max_attempts:
                    return EngineFailed(failures)
                log.error("message %s failed %d times; dead-lettered", message.message_id, failures)
                for item_delivery, _ in unit:  # a burst's merged messages go with it
                    await self._dead_letter(item_delivery, "dead_lettered")
                return []
        finished = now_ms()
        ready = []
        for item_delivery, item in unit:
            assert item is not None  # only well-formed messages are merged
            merged_into = "" if item is message else message.message_id
            reply = _reply_to(item, content, finished, merged_into)
            escalation = content.escalation
            commit = Commit(
                message=item,
                reply=reply,
                timings=Timings(
                    queue_wait_ms=started - item.accepted_at_ms,
                    processing_ms=finished - started,
                    end_to_end_ms=finished - item.accepted_at_ms,
                ),
                user_text=text,
                escalation=_reply_to(item, escalation, finished) if escalation and not merged_into else None,
                silenced=state.handed_off,
            )
            ready.append(Ready(item_delivery, item, reply, commit))
        return ready

    async def _finish(self, ready: list[Ready], spans: ConsumerSpans) -> None:
        """Steps 3 and 4 for a batch: commit, publish (the caller acks)."""
        if not ready:
            return
        fresh = [item.commit for item in ready if item.commit is not None]
        # One round trip for the batch: its span goes in the first message's trace.
        with spans.activate(ready[0].message.message_id):
            standing = iter(await self._until_redis_answers(lambda: self.store.commit(fresh)))
        replies = [next(standing) if item.commit is not None else item.reply for item in ready]
        outgoing = [out for out in map(_outgoing, replies) if out is not None]
        await self._hand_back(outgoing, spans)
        for item, reply in zip(ready, replies, strict=True):
            if item.commit is not None:
                timings = item.commit.timings
                self.metrics.reply_committed(reply, timings, item.commit.reply.reply.usage)
                with spans.activate(reply.message_id):
                    log.info(
                        "message processed",
                        extra={
                            "message_id": reply.message_id,
                            "conversation_id": reply.conversation_id,
                            "engine": reply.reply.engine,
                            "handoff": reply.reply.handoff,
                            "silenced": reply.silenced,
                            "merged_into": reply.merged_into or None,
                            "processingTime": round(timings.processing_ms, 2),
                            "latency_ms": round(timings.end_to_end_ms, 2),
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
                    await self.broker.publish_reply(reply)

        await asyncio.gather(*(publish_in_order(conversation) for conversation in by_conversation.values()))

    async def _dead_letter(self, delivery: AbstractIncomingMessage, kind: str) -> None:
        mark_current_failed(kind)
        await delivery.reject(requeue=False)
        self.metrics.errors.labels(kind).inc()
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


def _parse(delivery: AbstractIncomingMessage) -> Parsed:
    try:
        return delivery, InboundMessage.from_bytes(delivery.body)
    except MessageFormatError as exc:
        log.error("dead-lettering a malformed message: %s", exc)
        return delivery, None


async def _ack_each(ready: Sequence[Ready]) -> None:
    for item in ready:
        await item.delivery.ack()


async def _ack_whole_batch(ready: Sequence[Ready]) -> None:
    """Step 5 once every delivery of the batch is either settled already (dead-lettered) or in
    `ready`: one multiple-ack on the highest delivery tag settles them all, one frame instead of
    one per message. Not valid part-way through a batch, where a later unit may hold a lower tag."""
    if ready:
        last = max(ready, key=lambda item: item.delivery.delivery_tag or 0)
        await last.delivery.ack(multiple=True)


def bursts(parsed: Sequence[Parsed], window_ms: float) -> list[list[Parsed]]:
    """The batch cut into units answered by one reply each, in the order of their first message.

    A unit is one message, or (window_ms > 0) the messages of one conversation accepted within
    window_ms of its first; only fresh deliveries merge: a redelivered one may have its reply
    already, and it closes the burst before it, so a conversation's units keep its order.
    """
    units: list[list[Parsed]] = []
    open_bursts: dict[str, list[Parsed]] = {}  # conversation -> its unit still taking messages
    for item in parsed:
        delivery, message = item
        if message is None:
            units.append([item])
            continue
        burst = open_bursts.get(message.conversation_id)
        first = burst[0][1] if burst else None
        if (
            burst is not None
            and first is not None
            and not delivery.redelivered
            and message.accepted_at_ms - first.accepted_at_ms <= window_ms
        ):
            burst.append(item)
            continue
        unit = [item]
        units.append(unit)
        if window_ms > 0 and not delivery.redelivered:
            open_bursts[message.conversation_id] = unit
        else:
            open_bursts.pop(message.conversation_id, None)
    return units


def _reply_to(
    message: InboundMessage, content: ReplyContent, finished_ms: float, merged_into: str = ""
) -> ReplyMessage:
    return ReplyMessage(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        user_id=message.user_id,
        channel=message.channel,
        reply=content,
        latency_ms=finished_ms - message.accepted_at_ms,
        gateway_id=message.gateway_id,
        metadata=message.metadata,
        merged_into=merged_into,
    )


def _outgoing(reply: ReplyMessage) -> ReplyMessage | None:
    """What is published for a reply that stands. A channel's customer sees only real replies; a
    web request waiting on a message merged into another's reply gets that reply, and one waiting
    on a message the bot stays silent on learns so at once (a silenced reply holds no text)."""
    if reply.channel != "web" and (reply.silenced or reply.merged_into):
        return None
    return reply
