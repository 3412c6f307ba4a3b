"""Inbound messages, start to finish: each unit ends in one settle outcome (services/worker/settle.py).

The consumer (consumer.py) hands the processor one unit at a time per conversation lane: a message,
or (DEBOUNCE_MS) a burst of one conversation answered by one reply, each delivery parsed once on
arrival. The order of the steps is what makes the promises of SPEC section 3 hold:
1. read what is known (`_begin`; a stored reply means a redelivery: hand it back again, generate
   nothing);
2. generate (`_generate`: the one place a reply is about to be generated; what the reply is, is
   decided by the reply policy, services/worker/engines/policy.py);
3. commit (services/worker/commit.py; only the first writer wins; a web reply is pushed to the
   gateways by the same call), then `_committed`: the one place a reply is known to stand, with
   its timings, engine and channel;
4. hand the reply back where the commit did not: a channel's published with confirm, a web one
   handed back again pushed (retried in place while the delivery is still ours);
5. return `Settled`: the settlement acks each delivery, in order. A crash anywhere before the acks
   leave redelivers the message, and step 1 makes that harmless.

With DEBOUNCE_MS the last message of a burst gets the reply and the others are committed as merged
into it (stored, counted, logged, acked; a request waiting on one gets the combined reply with
`merged_into`). What must be atomic with storing the reply (silence while a human has the
conversation, the fallback streak that escalates, starting a handoff) is done by the commit, so a
reply generated just before a handoff began is stored silenced and never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aio_pika.abc import AbstractIncomingMessage

from services.worker.acks import still_held
from services.worker.commit import SILENT_REPLY, Commit, Committer, Timings
from services.worker.engines.base import ChoosingEngine, EngineRequest, Turn
from services.worker.engines.languages import customer_language
from services.worker.media import MediaResolver
from services.worker.privacy import CustomerRequests
from services.worker.push import ReplyPusher
from services.worker.settle import Abandoned, DeadLettered, DeadLetterKind, Outcome, Received, RetryAfter, Settled
from services.worker.state import WorkerStore, WorkState
from services.worker.streaming import delta_publisher
from shared import unanswered
from shared.broker import BROKER_ERRORS, DELIVERY_LIMIT, Broker, last_delivery, may_be_a_copy
from shared.logs import log_info
from shared.messages import InboundMessage, ReplyContent, ReplyMessage, now_ms
from shared.metrics import WorkerMetrics
from shared.store import REDIS_ERRORS, until_redis_answers
from shared.telemetry import ConsumerSpans, describe_reply, engine_span, mark_current_failed, push_span

log = logging.getLogger(__name__)

# What a reply's hand-back may fail with: RabbitMQ's (a channel's reply), Redis's (a web reply).
HAND_BACK_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, *REDIS_ERRORS)

MAX_BACKOFF_S = 5.0


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
class Taken:
    """A unit of well-formed messages, as step 1 found it."""

    deliveries: tuple[AbstractIncomingMessage, ...]
    messages: tuple[InboundMessage, ...]  # in the same order; the last one gets the reply
    state: WorkState
    started_ms: float


@dataclass(frozen=True, slots=True)
class Generated:
    """The unit's reply content, and its messages as the engine understood them."""

    content: ReplyContent
    messages: tuple[InboundMessage, ...]  # a voice note's text is its transcript
    user_text: str  # the customer's words the reply answers, as memory keeps them


@dataclass(frozen=True, slots=True)
class Processor:
    store: WorkerStore
    committer: Committer
    broker: Broker
    pusher: ReplyPusher
    engine: ChoosingEngine
    max_attempts: int
    media: MediaResolver
    metrics: WorkerMetrics
    debounce_ms: int = 0
    # A customer's erasure or request for a copy, acted on once its reply is out (None: not here).
    privacy: CustomerRequests | None = None
    # LOG_MESSAGE_TEXT: the message's text in the DEBUG line (off: its length only).
    log_text: bool = False

    def debounce_delay(self, first: Received) -> float:
        """Seconds to wait, before taking a unit that starts with `first`, for the rest of its
        burst: until DEBOUNCE_MS after it was accepted (nothing for a backlog or a redelivery)."""
        if not self.debounce_ms or may_be_a_copy(first.delivery) or first.message is None:
            return 0.0
        # Clamped: the gateway's clock may be ahead of ours.
        late_ms = first.message.accepted_at_ms + self.debounce_ms - now_ms()
        return min(self.debounce_ms, max(0.0, late_ms)) / 1000.0

    def unit_size(self, waiting: Sequence[Received]) -> int:
        """How many of a lane's waiting deliveries (one conversation's, in order) the next unit takes."""
        if not self.debounce_ms:
            return 1
        return len(bursts(waiting, self.debounce_ms)[0])

    async def handle(self, unit: Sequence[Received]) -> Outcome:
        """Process one unit of one conversation, start to finish, and say how it ends: Settled once
        every reply is out, DeadLettered, RetryAfter a back-off when the engine failed (the same
        unit runs again in place), Abandoned when the deliveries stopped being ours mid-way."""
        with ConsumerSpans([item.delivery for item in unit]) as spans:
            with spans.activate(unit[-1].delivery.message_id):
                prepared = await self._prepare(unit)
            if not isinstance(prepared, list):
                return prepared
            return await self._finish(prepared, spans)

    async def _prepare(self, unit: Sequence[Received]) -> list[Ready] | Outcome:
        """Steps 1 and 2 for one unit (a message, or a burst answered by its last message's reply)."""
        taken = await self._begin(unit)
        if not isinstance(taken, Taken):
            return taken
        generated = await self._reply_content(taken)
        if not isinstance(generated, Generated):
            return generated
        return self._ready(taken, generated)

    async def _begin(self, unit: Sequence[Received]) -> Taken | list[Ready] | Outcome:
        """Step 1: read what is known of the unit's last message; what needs no reply ends here."""
        last = unit[-1]
        if last.message is None:  # a malformed message is a unit of its own (`bursts`)
            log.error("dead-lettering a malformed message: %s", last.problem)
            return self._dead_letter([last.delivery], "malformed")
        message = last.message
        pairs = [(item.delivery, item.message) for item in unit if item.message is not None]
        started = now_ms()
        # The options offered are read only when they may matter: the fast path reads nothing.
        may_choose = bool(message.option) or self.engine.may_be_choice("\n".join(m.text for _, m in pairs))
        state = await until_redis_answers(
            lambda: self.store.begin(
                message,
                redelivered=may_be_a_copy(last.delivery),
                with_history=self.engine.uses_history,
                with_offered=may_choose,
            ),
            holding="the messages",
        )
        if state.stored_reply is not None:
            return [Ready(last.delivery, message, state.stored_reply)]
        if state.attempt > self.max_attempts:  # failed before and then its worker crashed
            return self._dead_letter([last.delivery], "dead_lettered")
        if last_delivery(last.delivery):  # kept killing its workers (no failure recorded then)
            log.error(
                "message %s returned %d times without settling; dead-lettered", message.message_id, DELIVERY_LIMIT
            )
            return self._dead_letter([last.delivery], "dead_lettered")
        return Taken(
            deliveries=tuple(delivery for delivery, _ in pairs),
            messages=tuple(message for _, message in pairs),
            state=state,
            started_ms=started,
        )

    async def _reply_content(self, taken: Taken) -> Generated | Outcome:
        """Step 2: the reply's content; a failing engine's unit is retried, then dead-lettered."""
        if taken.state.handed_off:  # a human has the conversation: generating would only cost
            return Generated(SILENT_REPLY, taken.messages, "\n".join(m.text for m in taken.messages))
        history = tuple(Turn(role=turn["role"], text=turn["text"]) for turn in taken.state.history)  # type: ignore[arg-type]
        try:
            return await self._understood_reply(taken, history)
        except Exception:
            log.exception("engine failed on message %s", taken.messages[-1].message_id)
            return await self._engine_failed(taken)

    async def _understood_reply(self, taken: Taken, history: tuple[Turn, ...]) -> Generated:
        """Media (voice, images, documents) -> what the engine reads; memory keeps the transcript."""
        media = await self.media.resolve(taken.messages)
        message, offered = media.messages[-1], taken.state.offered
        deltas = delta_publisher(self.broker, message)
        request = EngineRequest(
            media.text,
            message.conversation_id,
            history,
            images=media.images,
            documents=media.documents,
            on_delta=deltas,
            option=message.option,
            offered=offered.options,
            offered_for=offered.question,
            language=customer_language(message.metadata, media.text) or "",
        )
        try:
            content = media.unhandled or await self._generate(message, request)
        finally:
            if deltas is not None:
                await deltas.finished()
        # A copy only when it changes something (a voice note's reply): `replace` costs microseconds.
        if content.voice != media.voice:
            content = replace(content, voice=media.voice)
        return Generated(content, media.messages, media.memory_text)

    async def _engine_failed(self, taken: Taken) -> RetryAfter | DeadLettered:
        message_id = taken.messages[-1].message_id
        mark_current_failed("engine failed")
        failures = await until_redis_answers(lambda: self.store.record_failure(message_id), holding="the messages")
        return self._after_failures(message_id, failures, taken.deliveries)  # a burst's merged messages go with it

    async def failed_unexpectedly(self, unit: Sequence[Received]) -> RetryAfter | DeadLettered:
        """A unit whose handling raised outside the engine (a bug, for this message or all): one
        failed attempt at its last message, as an engine failure is; retried in place after a
        back-off, then dead-lettered with the rest of the unit once MAX_ATTEMPTS is reached, so a
        message that keeps failing never holds its conversation for good. Redis unreachable is no
        attempt of the message's (nothing can be counted): the unit waits in place."""
        last = unit[-1]
        if last.message is None:
            return self._dead_letter([last.delivery], "malformed")
        try:
            failures = await self.store.record_failure(last.message.message_id)
        except REDIS_ERRORS:
            return RetryAfter(MAX_BACKOFF_S)
        return self._after_failures(last.message.message_id, failures, [item.delivery for item in unit])

    def _after_failures(
        self, message_id: str, failures: int, deliveries: Sequence[AbstractIncomingMessage]
    ) -> RetryAfter | DeadLettered:
        """After `failures` counted failed attempts: another after a back-off, or, at MAX_ATTEMPTS,
        the dead-letter queue for the unit's deliveries."""
        if failures < self.max_attempts:
            return RetryAfter(backoff(failures))
        log.error("message %s failed %d times; dead-lettered", message_id, failures)
        return self._dead_letter(deliveries, "dead_lettered")

    def _ready(self, taken: Taken, generated: Generated) -> list[Ready]:
        """Each message of the unit with its reply to commit: the last one's, the others merged into it."""
        finished = now_ms()
        replying = generated.messages[-1]
        ready = []
        for delivery, message in zip(taken.deliveries, generated.messages, strict=True):
            merged_into = "" if message is replying else replying.message_id
            commit = _commit_of(taken, generated, message, merged_into=merged_into, finished_ms=finished)
            ready.append(Ready(delivery, message, commit.reply, commit))
        return ready

    async def _generate(self, message: InboundMessage, request: EngineRequest) -> ReplyContent:
        """A reply is about to be generated for `message` (the engine's call, in its span)."""
        if log.isEnabledFor(logging.DEBUG):
            # The customer's words only with LOG_MESSAGE_TEXT=on, masked like every log line.
            fields = {"channel": message.channel, "chars": len(request.text)}
            log.debug("generating a reply", extra=fields | ({"text": request.text} if self.log_text else {}))
        with engine_span(self.engine.name) as span:
            content = await self.engine.reply(request)
            describe_reply(span, content.engine, content.confidence, content.handoff, content.sources)
        return content

    async def _finish(self, ready: list[Ready], spans: ConsumerSpans) -> Settled | Abandoned:
        """Steps 3 and 4 for a unit: commit, then publish in order; the acks are the settlement's."""
        replies = await self._commit(ready, spans)
        for item, reply in zip(ready, replies, strict=True):
            if reply.merged_into:
                spans.merged(reply.message_id, reply.merged_into)
            with spans.activate(reply.message_id):
                if item.commit is not None:
                    self._committed(item.commit, reply)
                outgoing = _outgoing(reply, committed=item.commit is not None)
                if outgoing is not None and not await self._publish(outgoing, item.delivery):
                    mark_current_failed("given back")
                    return Abandoned(f"reply {reply.message_id} not handed back and its channel is gone")
        await unanswered.record(self.store.redis, self.store.names, [
            unanswered.Answered(item.commit.user_text, item.commit.reply.reply, reply.reply, reply.silenced)
            for item, reply in zip(ready, replies, strict=True) if item.commit is not None
        ])  # fmt: skip
        if self.privacy is not None:
            await self.privacy.settle([(item.message, reply) for item, reply in zip(ready, replies, strict=True)])
        return Settled(tuple(item.delivery for item in ready))

    async def _commit(self, ready: list[Ready], spans: ConsumerSpans) -> list[ReplyMessage]:
        """The replies that stand, in order: the fresh ones as committed, the stored ones as they were."""
        fresh = [item.commit for item in ready if item.commit is not None]
        last = ready[-1].message
        with spans.activate(last.message_id), self._hands_back(last, fresh):
            standing = iter(await until_redis_answers(lambda: self.committer.commit_all(fresh), holding="the messages"))
        return [next(standing) if item.commit is not None else item.reply for item in ready]

    def _hands_back(self, message: InboundMessage, fresh: list[Commit]) -> contextlib.AbstractContextManager[object]:
        """The hand-back's span, around the commit that pushes a web reply (the trace's `publish`)."""
        if message.channel != "web" or not fresh:
            return contextlib.nullcontext()
        names = self.store.names
        return push_span(names.replies_exchange, message_id=message.message_id, conversation_id=message.conversation_id)

    def _committed(self, commit: Commit, reply: ReplyMessage) -> None:
        """A freshly generated reply stands (`reply`: possibly silenced, or the escalation)."""
        timings = commit.timings
        self.metrics.reply_committed(reply, timings, commit.reply.reply.usage)
        if not log.isEnabledFor(logging.INFO):  # one line per message: its fields only when written
            return
        log_info(
            log,
            "message processed",
            {
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

    async def _publish(self, reply: ReplyMessage, delivery: AbstractIncomingMessage) -> bool:
        """Hand the reply back: a web one pushed to the gateways over Redis (services/worker/
        push.py), a channel's published with confirm to its delivery queue. A failure (Redis
        unreachable, a nack, a confirm timeout) while the delivery is still ours is retried in
        place: the reply is stored, so nothing is generated again, and the delivery is acked only
        once its reply is out. False: the delivery stopped being ours first."""
        attempt = 0
        while True:
            try:
                if reply.channel == "web":
                    await self.pusher.push(reply)
                else:
                    await self.broker.publish_reply(reply)
                return True
            except HAND_BACK_ERRORS as exc:
                if not still_held(delivery):
                    return False
                attempt += 1
                log.warning("reply %s not handed back (attempt %d), again: %r", reply.message_id, attempt, exc)
                await asyncio.sleep(backoff(attempt))

    @staticmethod
    def _dead_letter(deliveries: Sequence[AbstractIncomingMessage], kind: DeadLetterKind) -> DeadLettered:
        mark_current_failed(kind)  # the message's span; the settlement rejects the deliveries
        return DeadLettered(tuple(deliveries), kind)


def bursts(received: Sequence[Received], window_ms: float) -> list[list[Received]]:
    """The batch cut into units answered by one reply each, in the order of their first message.

    A unit is one message, or (window_ms > 0) the messages of one conversation accepted within
    window_ms of its first; only fresh deliveries merge: a redelivered one may have its reply
    already, and it closes the burst before it, so a conversation's units keep its order.
    """
    units: list[list[Received]] = []
    open_bursts: dict[str, list[Received]] = {}  # conversation -> its unit still taking messages
    for item in received:
        message = item.message
        if message is None:
            units.append([item])
            continue
        burst = open_bursts.get(message.conversation_id)
        first = burst[0].message if burst else None
        if (
            burst is not None
            and first is not None
            and not may_be_a_copy(item.delivery)
            and message.accepted_at_ms - first.accepted_at_ms <= window_ms
        ):
            burst.append(item)
            continue
        unit = [item]
        units.append(unit)
        if window_ms > 0 and not may_be_a_copy(item.delivery):
            open_bursts[message.conversation_id] = unit
        else:
            open_bursts.pop(message.conversation_id, None)
    return units


def _commit_of(
    taken: Taken, generated: Generated, message: InboundMessage, *, merged_into: str, finished_ms: float
) -> Commit:
    """What the commit of one message's reply needs; a merged message never escalates (its reply's does)."""
    escalation = generated.content.escalation
    return Commit(
        message=message,
        reply=_reply_to(message, generated.content, finished_ms, merged_into),
        timings=Timings(
            queue_wait_ms=taken.started_ms - message.accepted_at_ms,
            processing_ms=finished_ms - taken.started_ms,
            end_to_end_ms=finished_ms - message.accepted_at_ms,
        ),
        user_text=generated.user_text,
        escalation=_reply_to(message, escalation, finished_ms) if escalation and not merged_into else None,
        silenced=taken.state.handed_off,
    )


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


def _outgoing(reply: ReplyMessage, *, committed: bool) -> ReplyMessage | None:
    """What is handed back for a reply that stands (`committed`: by this unit's commit, which
    pushed a web one already). A channel's customer sees only real replies; a web request waiting
    on a message merged into another's reply gets that reply, and one waiting on a message the bot
    stays silent on learns so at once (a silenced reply holds no text)."""
    if reply.channel == "web":
        return None if committed else reply
    return None if reply.silenced or reply.merged_into else reply
