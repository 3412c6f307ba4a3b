"""The dead-letter queue, as operators see it: a look at what is there, replay, and discard.

Looking is `basic.get` of up to `limit` messages held unacknowledged (so each get returns the next
one), then all handed back with `nack(requeue=True)`: RabbitMQ's own management UI peeks the same
way. On RabbitMQ 4.0-4.2 a return counts towards a quorum queue's default delivery limit (20), so
the monitor looks again only when the queue's depth changed (or after LOOK_AGAIN_S), not on every
dashboard refresh.

Replay finds the message the same way, republishes it where it first went (the exchange and
routing key its `x-death` header names: the inbound exchange and its shard, or the replies
exchange for a failed delivery), waits for the broker's confirm and only then acks it off the
dead-letter queue: a crash in between leaves a copy in both places, never in neither. The worker's
attempt counter is reset first, or the message would be dead-lettered again at once. A message
that died on one of this deployment's queues without passing its exchanges (bytes published
straight to a shard queue) goes back to that queue through the default exchange.

Every letter has an `id` (its message_id, or `body-<hash>` of its bytes when it has none) and,
when its body is none of our messages, the `problem` with it ("not JSON: ..."), the reason the
worker dead-lettered it at once. Discard finds a letter the same way and acks it off the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from redis.asyncio import Redis

from shared.broker import BROKER_ERRORS, Broker
from shared.messages import InboundMessage, MessageFormatError, ReplyMessage
from shared.names import Names

PEEK_LIMIT = 50
SCAN_LIMIT = 1000
LOOK_AGAIN_S = 300.0
GET_TIMEOUT_S = 5.0
TEXT_PREVIEW = 200
# Headers of the dead message's past life; a replayed message starts a new one.
_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
)


class ReplayError(Exception):
    """The message cannot be replayed or discarded (not found, or nowhere known to send it)."""


class NotFound(ReplayError):
    """No letter of that id is in the dead-letter queue."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # the message_id, or body-<hash> when the message has none
    message_id: str
    kind: str  # "inbound" (a customer's message), "reply" (a failed delivery) or "unreadable"
    conversation_id: str
    channel: str
    user_id: str
    text: str
    queue: str
    reason: str
    deaths: int
    died_at: float | None
    exchange: str
    routing_key: str
    problem: str = ""  # why the body is none of our messages ("unreadable" letters)
    # Where a replay sends it (exchange, routing key); None: nowhere known, it can only be discarded.
    destination: tuple[str, str] | None = None

    @property
    def replayable(self) -> bool:
        return self.destination is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "kind": self.kind,
            "conversation_id": self.conversation_id,
            "channel": self.channel,
            "user_id": self.user_id,
            "text": self.text,
            "queue": self.queue,
            "reason": self.reason,
            "deaths": self.deaths,
            "died_at": self.died_at,
            "problem": self.problem,
            "replayable": self.replayable,
        }


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def describe(message: AbstractIncomingMessage, names: Names) -> DeadLetter:
    deaths = message.headers.get("x-death")
    death: dict[str, Any] = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    routing_keys = death.get("routing-keys") or []
    died = death.get("time")
    fields = _contents(message.body)
    letter = DeadLetter(
        id=message.message_id or f"body-{hashlib.sha256(message.body).hexdigest()[:16]}",
        message_id=message.message_id or "",
        queue=_text(death.get("queue")),
        reason=_text(death.get("reason")),
        deaths=int(death.get("count") or 1),
        died_at=died.timestamp() if isinstance(died, datetime) else None,
        exchange=_text(death.get("exchange")),
        routing_key=_text(routing_keys[0]) if routing_keys else "",
        **fields,
    )
    return dataclasses.replace(letter, destination=_destination(letter, names))


def _contents(body: bytes) -> dict[str, Any]:
    """What the body says: one of our inbound messages, a reply, or neither and why."""
    try:
        inbound = InboundMessage.from_bytes(body)
    except MessageFormatError as exc:
        problem = str(exc)
    else:
        return {
            "kind": "inbound",
            "conversation_id": inbound.conversation_id,
            "channel": inbound.channel,
            "user_id": inbound.user_id,
            "text": inbound.text[:TEXT_PREVIEW],
        }
    with contextlib.suppress(MessageFormatError):
        reply = ReplyMessage.from_bytes(body)
        return {
            "kind": "reply",
            "conversation_id": reply.conversation_id,
            "channel": reply.channel,
            "user_id": reply.user_id,
            "text": reply.reply.text[:TEXT_PREVIEW],
        }
    # Whatever it is, shown as printable text (no control characters reach the page).
    preview = "".join(c if c.isprintable() else "\ufffd" for c in body[:TEXT_PREVIEW].decode(errors="replace"))
    return {
        "kind": "unreadable",
        "conversation_id": "",
        "channel": "",
        "user_id": "",
        "text": preview,
        "problem": problem,
    }


def _destination(letter: DeadLetter, names: Names) -> tuple[str, str] | None:
    """Where the letter first went: the exchange and routing key it died from when they are this
    deployment's; else the queue it died on, when it is one of ours, through the default exchange;
    else, for a customer's message, its conversation's shard."""
    if letter.exchange in (names.inbound_exchange, names.replies_exchange):
        return letter.exchange, letter.routing_key
    if letter.queue in names.shard_queues:
        return "", letter.queue
    if letter.kind == "inbound":
        return names.inbound_exchange, str(names.shard_of(letter.conversation_id))
    return None


Resend = Callable[[AbstractIncomingMessage, "DeadLetter"], Awaitable[None]]


class DeadLetters:
    def __init__(self, broker: Broker, redis: Redis) -> None:
        self._broker = broker
        self._redis = redis
        self._lock = asyncio.Lock()
        self._seen: tuple[int, float, list[DeadLetter]] | None = None

    async def peek(self, depth: int | None, limit: int = PEEK_LIMIT) -> list[DeadLetter]:
        """The first `limit` dead letters; `depth` is the queue's depth as last measured (None if unknown)."""
        if depth == 0:
            return []
        async with self._lock:
            if self._seen is not None:
                seen_depth, seen_at, letters = self._seen
                if seen_depth == depth and time.monotonic() - seen_at < LOOK_AGAIN_S:
                    return letters
            letters = await self._scan(None, None, limit)
            self._seen = (depth if depth is not None else -1, time.monotonic(), letters)
            return letters

    async def replay(self, letter_id: str) -> DeadLetter:
        """Send one dead letter back where it came from; raises ReplayError or BROKER_ERRORS."""
        return await self._take(letter_id, self._republish)

    async def discard(self, letter_id: str) -> DeadLetter:
        """Remove one dead letter for good; raises NotFound or BROKER_ERRORS."""
        return await self._take(letter_id, None)

    async def _take(self, letter_id: str, before_ack: Resend | None) -> DeadLetter:
        async with self._lock:
            self._seen = None
            letters = await self._scan(letter_id, before_ack, SCAN_LIMIT)
        if not letters or letters[-1].id != letter_id:
            raise NotFound(f"message_id: {letter_id!r} is not in the dead-letter queue")
        return letters[-1]

    async def _scan(self, take: str | None, before_ack: Resend | None, limit: int) -> list[DeadLetter]:
        """Get up to `limit` messages; take (and stop at) the one whose id is `take`: `before_ack`
        it (a replay), then ack it off the queue. Everything not taken goes back to the queue."""
        channel = await self._broker.connection.channel(publisher_confirms=False)
        held: list[AbstractIncomingMessage] = []
        letters: list[DeadLetter] = []
        try:
            queue = await channel.declare_queue(self._broker.names.dead_letter_queue, passive=True, robust=False)
            while len(held) < limit:
                message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
                if message is None:
                    break
                letter = describe(message, self._broker.names)
                letters.append(letter)
                if letter.id == take:
                    held.append(message)  # until it is done with: a failure gives it back
                    if before_ack is not None:
                        await before_ack(message, letter)
                    await message.ack()
                    held.pop()
                    break
                held.append(message)
        finally:
            await self._give_back(channel, held)
        return letters

    async def _give_back(self, channel: AbstractRobustChannel, held: list[AbstractIncomingMessage]) -> None:
        with contextlib.suppress(*BROKER_ERRORS):
            for message in held:
                await message.nack(requeue=True)
        # Closing the channel returns anything a failed nack left behind.
        with contextlib.suppress(*BROKER_ERRORS):
            await channel.close()

    async def _republish(self, message: AbstractIncomingMessage, letter: DeadLetter) -> None:
        if letter.destination is None:
            raise ReplayError(
                f"message_id: {letter.id!r} died on no queue of this deployment ({letter.queue or 'unknown'}):"
                " there is nowhere to replay it; discard it instead"
            )
        exchange, routing_key = letter.destination
        if letter.kind == "inbound":
            await self._redis.delete(self._broker.names.attempts_key(letter.message_id))
        headers = {k: v for k, v in message.headers.items() if k not in _DEATH_HEADERS}
        await self._broker.publish(
            exchange, routing_key, message.body, message_id=letter.message_id, headers=headers, mandatory=True
        )
