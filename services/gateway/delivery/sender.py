"""The consumer of one channel's durable delivery queue: replies out through the channel's API.

For each reply: split it into parts the channel accepts (its options go with the last), take the
reply's lease in the ledger, then send the parts not yet confirmed (with VOICE_REPLIES=on, the
answer to a voice note has one more part: its text spoken, synthesised right then, so the audio
never waits in a queue; one that cannot be made or sent leaves the reply delivered as text), one
after another, each paced per recipient and retried with backoff (honouring `Retry-After`) on
network errors, 5xx and 429. Only after the ledger says `done` is the delivery acked; a reply
that still fails is dead-lettered and counted as an error.
A proactive template (shared/outbound.py) is one part of its own. Each part the platform took is
recorded in the message's receipt with the platform's id (shared/receipts.py), which WhatsApp's
delivery statuses name; a dead-lettered one is recorded failed, with the platform's error code.

The crash-mid-send window: a part whose request was on the wire when its consumer died has an
unknown fate (none of the platforms takes an idempotency key). Its copy is redelivered, waits out
the dead consumer's lease and sends that part again: a customer may, in that rare window, get one
part twice, but is never left without the answer. Parts the platform confirmed are never resent,
because each confirmation reaches the ledger before the next part starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from services.gateway.claims import GatewayStore
from services.gateway.delivery.clients import ChannelClient, MissingAddress, SendFailed
from services.gateway.delivery.ledger import Ledger
from services.gateway.delivery.order import OutboundOrder
from services.gateway.delivery.split import split_text, units
from services.gateway.ratelimit import TokenBuckets
from shared.broker import BROKER_ERRORS, Broker
from shared.logs import mask_pii
from shared.messages import MessageFormatError, Option, ReplyMessage, Template
from shared.metrics import DeliveryMetrics
from shared.receipts import Failure, Receipts, StatusUpdate, count_status
from shared.speech import SpeechError
from shared.store import REDIS_ERRORS, until_redis_answers
from shared.telemetry import ConsumerSpans, mark_current_failed

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFETCH = 32  # replies in hand at once per gateway; different recipients go out in parallel
LEASE_MARGIN_S = 2.0  # on top of one request's timeout: the lease outlives any send it covers
LEASE_POLL_S = 0.25
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 600.0  # a platform asking for more is treated as failing; the broker times out at 30 min

Outcome = Literal["delivered", "duplicate", "handed_over", "dead_lettered"]


def backoff(attempt: int) -> float:
    """Exponential with jitter, so many replies failing together do not retry together."""
    ceiling = min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str
    options: tuple[Option, ...] = ()


class VoicePart:
    """The reply's text, spoken (VOICE_REPLIES=on); its audio is made when it is sent."""


@dataclass(frozen=True, slots=True)
class TemplatePart:
    template: Template


VOICE = VoicePart()
Part = TextPart | VoicePart | TemplatePart


class LeaseLost(Exception):
    """Another consumer took this reply over (ours stalled past the lease); it finishes the job."""


class KeyedLocks:
    """One lock per recipient, forgotten when nobody holds or waits for it: replies to one
    recipient leave this process in the order they arrived."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: defaultdict[str, int] = defaultdict(int)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


@dataclass(frozen=True, slots=True)
class DeliveryRetryPolicy:
    """How long one request to a channel may take (a reply's lease outlives it), and how many tries a send gets."""

    timeout_s: float
    max_attempts: int

    @property
    def lease_s(self) -> float:
        return self.timeout_s + LEASE_MARGIN_S


class DeliveryConsumer:
    def __init__(
        self,
        broker: Broker,
        store: GatewayStore,
        client: ChannelClient,
        policy: DeliveryRetryPolicy,
        instance_id: str,
        metrics: DeliveryMetrics,
        speak: Callable[[str], Awaitable[bytes]] | None = None,
        *,
        retention_s: int,
    ) -> None:
        self._broker = broker
        self._speak = speak
        self._store = store
        self._client = client
        self._policy = policy
        self._instance_id = instance_id
        self._metrics = metrics
        self._ledger = Ledger(store.redis, broker.names)
        self._receipts = Receipts(store.redis, broker.names, retention_s)
        self._pacing = TokenBuckets(store.pipeline, broker.names.pacing_prefix(client.channel))
        self._order = KeyedLocks()
        self._outbound = OutboundOrder(store.redis, broker.names)
        self._inflight: set[asyncio.Task[object]] = set()
        self._subscription: tuple[AbstractRobustChannel, AbstractQueue, str] | None = None

    @property
    def channel(self) -> str:
        return self._client.channel

    @property
    def ready(self) -> bool:
        """Subscribed, on a live connection (readiness of the gateway includes this)."""
        return self._subscription is not None and not self._subscription[0].is_closed and self._broker.connected

    async def run(self) -> None:
        """Subscribe, retrying until it works; from then on the robust channel re-subscribes by
        itself after a broker drop."""
        while True:
            await self._broker.wait_ready()
            try:
                await self._subscribe()
                return
            except BROKER_ERRORS as exc:
                log.warning("%s delivery not subscribed yet, retrying: %s", self._client.channel, exc)
                await asyncio.sleep(1.0)

    async def _subscribe(self) -> None:
        names = self._broker.names
        channel = await self._broker.connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await self._broker.declare_durable_queue(channel, names.delivery_queue(self._client.channel))
        tag = await queue.consume(self._on_delivery)
        self._subscription = (channel, queue, tag)

    async def stop(self, grace_s: float) -> None:
        """Stop taking replies, let those in hand finish within the grace period, then close the
        channel: whatever is unfinished goes back to the queue for another gateway."""
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        channel, queue, tag = subscription
        # Cancelling the subscription, not the channel, keeps the deliveries in hand ackable.
        with contextlib.suppress(*BROKER_ERRORS):
            await queue.cancel(tag, timeout=5)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=grace_s)
        with contextlib.suppress(*BROKER_ERRORS):
            await channel.close()

    async def _on_delivery(self, delivery: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            # The delivery continues the message's trace; the API calls are its children.
            with ConsumerSpans([delivery]) as spans, spans.activate(delivery.message_id):
                await self._handle(delivery)
        except Exception:
            # A bug, not the platform: give the reply back after a pause. The queue's delivery
            # limit dead-letters it if it keeps happening.
            log.exception("%s delivery of %s failed unexpectedly", self._client.channel, delivery.message_id)
            await asyncio.sleep(1.0)
            if not delivery.processed:
                with contextlib.suppress(*BROKER_ERRORS):
                    await delivery.nack(requeue=True)
        finally:
            self._inflight.discard(task)

    async def _handle(self, delivery: AbstractIncomingMessage) -> None:
        channel = self._client.channel
        try:
            reply = ReplyMessage.from_bytes(delivery.body)
            recipient = self._client.recipient(reply)
        except (MessageFormatError, MissingAddress) as exc:
            log.error("dead-lettering an undeliverable %s reply: %s", channel, mask_pii(str(exc)))
            await self._dead_letter(delivery)
            return
        if reply.silenced or reply.merged_into:
            # Never the customer's to see: a human has the conversation, or the text went out
            # under the message it was merged into. The worker does not send these; nor do we.
            await delivery.ack()
            return
        # The conversation's earlier replies first, whichever gateway holds them (waited for before
        # the recipient's lock, which a redelivered earlier reply may still need).
        await self._redis(lambda: self._outbound.wait_turn(reply.conversation_id, reply.message_id))
        async with self._order.hold(recipient):
            outcome = await self._deliver(reply, recipient)
            if outcome != "handed_over":  # the consumer that took it over settles it
                await self._redis(lambda: self._outbound.settled(reply.conversation_id, reply.message_id))
        if outcome == "dead_lettered":
            await self._dead_letter(delivery)
        else:
            await delivery.ack()
        self._metrics.outcomes.labels(channel, outcome).inc()

    async def _deliver(self, reply: ReplyMessage, recipient: str) -> Outcome:
        owner = f"{self._instance_id}:{uuid.uuid4().hex[:8]}"
        options = reply.reply.options
        texts = split_text(reply.reply.text, self._client.text_limit)
        if options and texts and units(texts[-1]) > self._client.options_text_limit:
            # The options go with the last part, whose text has a smaller room (WhatsApp's
            # interactive body); the parts before it are plain messages, as long as those may be.
            texts[-1:] = split_text(texts[-1], self._client.options_text_limit)
        parts: list[Part] = [TextPart(text, options if n == len(texts) - 1 else ()) for n, text in enumerate(texts)]
        if parts and reply.reply.voice and self._speak is not None:
            parts.append(VOICE)
        if reply.reply.template is not None:
            parts = [TemplatePart(reply.reply.template)]
        sent = await self._claim(reply.message_id, owner)
        if sent is None:
            return "duplicate"
        try:
            for index in range(sent, len(parts)):
                await self._send_part(reply, recipient, parts[index], owner, sent=index)
                await self._hold(reply.message_id, owner, 0, sent=index + 1)
        except LeaseLost:
            log.warning("reply %s taken over by another consumer", reply.message_id)
            return "handed_over"
        except SendFailed as exc:
            log.error(
                "%s reply %s to %s not delivered, dead-lettered: %s",
                self._client.channel,
                reply.message_id,
                mask_pii(recipient),
                exc,
            )
            await self._redis(lambda: self._ledger.release(reply.message_id, owner))
            await self._failed(reply.message_id, exc)
            return "dead_lettered"
        await self._redis(lambda: self._ledger.finish(reply.message_id, owner))
        if len(parts) > 1:
            log.info("reply %s delivered in %d parts", reply.message_id, len(parts))
        return "delivered"

    async def _claim(self, message_id: str, owner: str) -> int | None:
        """Wait for any other consumer's lease on this reply; None when it is delivered already."""
        while True:
            lease = await self._redis(lambda: self._ledger.acquire(message_id, owner, self._policy.lease_s))
            if lease.done:
                return None
            if not lease.wait_s:
                return lease.sent
            await asyncio.sleep(min(lease.wait_s, LEASE_POLL_S))

    async def _send_part(self, reply: ReplyMessage, recipient: str, part: Part, owner: str, sent: int) -> None:
        """One part, retried; raises SendFailed once it is not worth trying again."""
        audio = b""
        if part is VOICE:
            try:
                assert self._speak is not None
                audio = await self._speak(reply.reply.text)
                await self._try_part(reply, recipient, part, owner, sent, audio)
            except (SpeechError, SendFailed) as exc:
                # The text went out already: the customer has the answer, only not spoken (speech
                # failed, or the platform will not take the voice note: the customer's privacy
                # settings, a format refused). Not a failed reply, nor a dead letter.
                log.warning("voice reply %s not sent, text only: %s", reply.message_id, exc)
            return
        await self._try_part(reply, recipient, part, owner, sent, audio)

    async def _try_part(
        self, reply: ReplyMessage, recipient: str, part: Part, owner: str, sent: int, audio: bytes
    ) -> None:
        """Sends `part`, retrying what may succeed later; raises SendFailed when that is over."""
        for attempt in range(1, self._policy.max_attempts + 1):
            await self._pace(reply, recipient, owner, sent)
            try:
                if isinstance(part, TextPart):
                    platform_id = await self._client.send(reply, part.text, part.options)
                elif isinstance(part, TemplatePart):
                    platform_id = await self._client.send_template(reply, part.template)
                else:
                    platform_id = await self._client.send_voice(reply, audio)
                await self._accepted(reply.message_id, platform_id)
                return
            except SendFailed as exc:
                if not exc.retriable or attempt == self._policy.max_attempts:
                    raise
                if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER_S:
                    raise
                delay = max(backoff(attempt), exc.retry_after or 0.0)
                log.warning(
                    "%s send of reply %s failed (attempt %d of %d), retrying in %.1f s: %s",
                    self._client.channel,
                    reply.message_id,
                    attempt,
                    self._policy.max_attempts,
                    delay,
                    exc,
                )
                self._metrics.retries.labels(self._client.channel).inc()
                await self._hold(reply.message_id, owner, delay, sent)

    async def _pace(self, reply: ReplyMessage, recipient: str, owner: str, sent: int) -> None:
        """Wait for the recipient's send slot, shared with every other gateway through Redis."""
        limit = self._client.pace(reply)
        key = self._pacing.key("recipient", recipient)
        while wait := await self._redis(lambda: self._pacing.take([(key, limit)])):
            await self._hold(reply.message_id, owner, wait, sent)
        await self._hold(reply.message_id, owner, 0, sent)

    async def _hold(self, message_id: str, owner: str, seconds: float, sent: int) -> None:
        """Record `sent` confirmed parts and keep the lease for a send after `seconds` of waiting
        (so nobody takes over a reply that only waits its turn), then wait."""
        lease = seconds + self._policy.lease_s
        if not await self._redis(lambda: self._ledger.renew(message_id, owner, lease, sent)):
            raise LeaseLost
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _accepted(self, message_id: str, platform_id: str) -> None:
        """The platform took a part: its receipt, and the wamid its statuses will name."""
        wamid = platform_id if self._client.channel == "whatsapp" else ""
        early = await self._redis(lambda: self._receipts.accepted(message_id, time.time(), wamid))
        for update in early:  # its statuses that came before this
            count_status(self._metrics, message_id, update)

    async def _failed(self, message_id: str, exc: SendFailed) -> None:
        failure = Failure(exc.code, "not delivered", str(exc))
        await self._redis(lambda: self._receipts.record(message_id, StatusUpdate("failed", time.time(), failure)))
        self._metrics.failures.labels(self._client.channel, str(exc.code)).inc()

    async def _dead_letter(self, delivery: AbstractIncomingMessage) -> None:
        mark_current_failed("dead_lettered")  # the delivery's process span, as the worker's
        await delivery.reject(requeue=False)
        self._metrics.errors.labels("delivery").inc()
        try:
            await self._store.record_error("delivery")
        except REDIS_ERRORS as exc:
            log.error("delivery error not counted: %s", exc)

    async def _redis(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Redis down is not the reply's fault: hold it in place until Redis answers."""
        return await until_redis_answers(operation, holding="channel replies")
