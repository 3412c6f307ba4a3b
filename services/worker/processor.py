"""Inbound messages, start to finish: every delivery ends acked, retried in place or dead-lettered.

The consumer (consumer.py) hands the processor one unit at a time per conversation lane: a message,
or (DEBOUNCE_MS) a burst of one conversation answered by one reply. The order of the steps is what
makes the promises of SPEC section 3 hold:
1. read what is known (a stored reply means a redelivery: hand it back again, generate nothing);
2. generate (`_generate`: the one place a reply is about to be generated);
3. commit (services/worker/commit.py; only the first writer wins), then `_committed`: the one
   place a reply is known to stand, with its timings, engine and channel;
4. publish the reply with confirm (retried in place while the delivery is still ours);
5. ack each delivery, in order. A crash anywhere before 5 redelivers the message, and step 1
   makes that harmless.

With DEBOUNCE_MS the last message of a burst gets the reply and the others are committed as merged
into it (stored, counted, logged, acked; a request waiting on one gets the combined reply with
`merged_into`). The reply policy (handoff, silence while a human has the conversation, `/reset`)
is applied by the commit, atomically, so a reply generated just before a handoff began is stored
silenced and never sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from aio_pika.abc import AbstractIncomingMessage

from services.worker.acks import ChannelAcks, still_held
from services.worker.commit import SILENT_REPLY, Commit, Committer, Timings
from services.worker.engines.base import ChoosingEngine, EngineRequest, Turn
from services.worker.media import MediaResolver
from services.worker.streaming import delta_publisher
from shared import unanswered
from shared.broker import BROKER_ERRORS, Broker, may_be_a_copy
from shared.messages import InboundMessage, MessageFormatError, ReplyContent, ReplyMessage, now_ms
from shared.metrics import WorkerMetrics
from shared.store import REDIS_ERRORS, Store
from shared.telemetry import ConsumerSpans, describe_reply, engine_span, mark_current_failed

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 5.0
# A delivery and its message (None when the body is not one of our messages).
Parsed = tuple[AbstractIncomingMessage, InboundMessage | None]


def backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF_S, 0.1 * 2**attempt))


class Abandoned(Exception):
    """The unit's deliveries are no longer ours (their channel closed): the broker redelivers them."""


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
    committer: Committer
    broker: Broker
    engine: ChoosingEngine
    max_attempts: int
    media: MediaResolver
    metrics: WorkerMetrics
    debounce_ms: int = 0

    def debounce_delay(self, delivery: AbstractIncomingMessage) -> float:
        """Seconds to wait, before taking a unit that starts with `delivery`, for the rest of its
        burst: until DEBOUNCE_MS after it was accepted (nothing for a backlog or a redelivery)."""
        if not self.debounce_ms or may_be_a_copy(delivery):
            return 0.0
        try:
            accepted = InboundMessage.from_bytes(delivery.body).accepted_at_ms
        except MessageFormatError:
            return 0.0
        # Clamped: the gateway's clock may be ahead of ours.
        return min(self.debounce_ms, max(0.0, accepted + self.debounce_ms - now_ms())) / 1000.0

    def unit_size(self, waiting: Sequence[AbstractIncomingMessage]) -> int:
        """How many of a lane's waiting deliveries (one conversation's, in order) the next unit takes."""
        if not self.debounce_ms:
            return 1
        return len(bursts([_parse(delivery) for delivery in waiting], self.debounce_ms)[0])

    async def handle(self, unit: Sequence[AbstractIncomingMessage], acks: ChannelAcks) -> float | None:
        """Process one unit of one conversation, start to finish. Returns None when every delivery
        is settled, or the back-off in seconds when the engine failed: the caller retries the same
        unit in place after the pause (the conversation waits, the others do not). Raises
        Abandoned when the deliveries stopped being ours mid-way."""
        with ConsumerSpans(unit) as spans:
            with spans.activate(unit[-1].message_id):
                outcome = await self._prepare([_parse(delivery) for delivery in unit], acks)
            if isinstance(outcome, EngineFailed):
                return backoff(outcome.failures)
            await self._finish(outcome, spans, acks)
        return None

    async def _prepare(self, unit: Sequence[Parsed], acks: ChannelAcks) -> list[Ready] | EngineFailed:
        """Steps 1 and 2 for one unit (a message, or a burst answered by its last message's reply).
        Nothing ready: the delivery was settled here (dead-lettered)."""
        delivery, message = unit[-1]
        if message is None:
            await self._dead_letter(delivery, "malformed", acks)
            return []
        messages = [m for _, m in unit if m is not None]
        text = "\n".join(m.text for m in messages)
        started = now_ms()
        accepted = message
        # The options offered are read only when they may matter: the fast path reads nothing.
        may_choose = bool(message.option) or self.engine.may_be_choice(text)
        state = await self._until_redis_answers(
            lambda: self.store.begin(
                accepted,
                redelivered=may_be_a_copy(delivery),
                with_history=self.engine.uses_history,
                with_offered=may_choose,
            )
        )
        if state.stored_reply is not None:
            return [Ready(delivery, message, state.stored_reply)]
        if state.attempt > self.max_attempts:  # failed before and then its worker crashed
            await self._dead_letter(delivery, "dead_lettered", acks)
            return []
        if state.handed_off:
            content = SILENT_REPLY  # a human has the conversation: generating would only cost
        else:
            history = tuple(Turn(role=turn["role"], text=turn["text"]) for turn in state.history)  # type: ignore[arg-type]
            try:
                # Media (voice, images, documents) -> what the engine reads; memory keeps the transcript.
                media = await self.media.resolve(messages)
                unit = [(d, understood) for (d, _), understood in zip(unit, media.messages, strict=True)]
                message, text = media.messages[-1], media.memory_text
                request = EngineRequest(
                    media.text,
                    message.conversation_id,
                    history,
                    images=media.images,
                    documents=media.documents,
                    on_delta=delta_publisher(self.broker, message),
                    option=message.option,
                    offered=state.offered.options,
                    offered_for=state.offered.question,
                )
                content = replace(media.unhandled or await self._generate(message, request), voice=media.voice)
            except Exception:
                log.exception("engine failed on message %s", message.message_id)
                mark_current_failed("engine failed")
                failures = await self._until_redis_answers(lambda: self.store.record_failure(message.message_id))
                if failures < self.max_attempts:
                    return EngineFailed(failures)
                log.error("message %s failed %d times; dead-lettered", message.message_id, failures)
                for item_delivery, _ in unit:  # a burst's merged messages go with it
                    await self._dead_letter(item_delivery, "dead_lettered", acks)
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

    async def _generate(self, message: InboundMessage, request: EngineRequest) -> ReplyContent:
        """A reply is about to be generated for `message` (the engine's call, in its span)."""
        # The text as received, for debugging; masked like every log line (shared.logs.mask_pii).
        log.debug("generating a reply", extra={"channel": message.channel, "text": request.text})
        with engine_span(self.engine.name) as span:
            content = await self.engine.reply(request)
            describe_reply(span, content.engine, content.confidence, content.handoff, content.sources)
        return content

    async def _finish(self, ready: list[Ready], spans: ConsumerSpans, acks: ChannelAcks) -> None:
        """Steps 3 to 5 for a unit: commit, publish in order, ack each in order (the acks of
        every lane leave together: services/worker/acks.py)."""
        if not ready:
            return
        fresh = [item.commit for item in ready if item.commit is not None]
        with spans.activate(ready[-1].message.message_id):
            standing = iter(await self._until_redis_answers(lambda: self.committer.commit_all(fresh)))
        replies = [next(standing) if item.commit is not None else item.reply for item in ready]
        for item, reply in zip(ready, replies, strict=True):
            with spans.activate(reply.message_id):
                if item.commit is not None:
                    self._committed(item.commit, reply)
                outgoing = _outgoing(reply)
                if outgoing is not None:
                    await self._publish(outgoing, item.delivery)
        for item in ready:
            acks.ack(item.delivery)
        await unanswered.record(self.store.redis, self.store.names, [
            unanswered.Answered(item.commit.user_text, item.commit.reply.reply, reply.reply, reply.silenced)
            for item, reply in zip(ready, replies, strict=True) if item.commit is not None
        ])  # fmt: skip

    def _committed(self, commit: Commit, reply: ReplyMessage) -> None:
        """A freshly generated reply stands (`reply`: possibly silenced, or the escalation)."""
        timings = commit.timings
        self.metrics.reply_committed(reply, timings, commit.reply.reply.usage)
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

    async def _publish(self, reply: ReplyMessage, delivery: AbstractIncomingMessage) -> None:
        """Publish with confirm. A refusal (nack, confirm timeout) while the delivery is still ours
        is retried in place: the reply is stored, so nothing is generated again, and the delivery
        is acked only once its reply is out."""
        attempt = 0
        while True:
            try:
                await self.broker.publish_reply(reply)
                return
            except BROKER_ERRORS as exc:
                if not still_held(delivery):
                    raise Abandoned from exc
                attempt += 1
                log.warning("reply %s not confirmed (attempt %d), publishing again: %r", reply.message_id, attempt, exc)
                await asyncio.sleep(backoff(attempt))

    async def _dead_letter(self, delivery: AbstractIncomingMessage, kind: str, acks: ChannelAcks) -> None:
        mark_current_failed(kind)
        try:
            await acks.reject(delivery)
        except BROKER_ERRORS as exc:
            raise Abandoned from exc
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
            and not may_be_a_copy(delivery)
            and message.accepted_at_ms - first.accepted_at_ms <= window_ms
        ):
            burst.append(item)
            continue
        unit = [item]
        units.append(unit)
        if window_ms > 0 and not may_be_a_copy(delivery):
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
