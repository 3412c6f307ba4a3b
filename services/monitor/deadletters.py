"""The dead-letter queue, as operators see it: a look at what is there, and replay.

Looking is `basic.get` of up to `limit` messages held unacknowledged (so each get returns the next
one), then all handed back with `nack(requeue=True)`: RabbitMQ's own management UI peeks the same
way. On RabbitMQ 4.0-4.2 a return counts towards a quorum queue's default delivery limit (20), so
the monitor looks again only when the queue's depth changed (or after LOOK_AGAIN_S), not on every
dashboard refresh.

Replay finds the message the same way, republishes it where it first went (the exchange and
routing key its `x-death` header names: the inbound exchange and its shard, or the replies
exchange for a failed delivery), waits for the broker's confirm and only then acks it off the
dead-letter queue: a crash in between leaves a copy in both places, never in neither. The worker's
attempt counter is reset first, or the message would be dead-lettered again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from redis.asyncio import Redis

from shared.broker import BROKER_ERRORS, Broker
from shared.messages import InboundMessage, MessageFormatError, ReplyMessage

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
    """The message cannot be replayed (not found, or nowhere known to send it)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
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

    def to_dict(self) -> dict[str, Any]:
        return {
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
        }


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    deaths = message.headers.get("x-death")
    death: dict[str, Any] = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    routing_keys = death.get("routing-keys") or []
    died = death.get("time")
    fields: dict[str, Any] = {"kind": "unreadable", "conversation_id": "", "channel": "", "user_id": "", "text": ""}
    try:
        inbound = InboundMessage.from_bytes(message.body)
        fields = {
            "kind": "inbound",
            "conversation_id": inbound.conversation_id,
            "channel": inbound.channel,
            "user_id": inbound.user_id,
            "text": inbound.text,
        }
    except MessageFormatError:
        with contextlib.suppress(MessageFormatError):
            reply = ReplyMessage.from_bytes(message.body)
            fields = {
                "kind": "reply",
                "conversation_id": reply.conversation_id,
                "channel": reply.channel,
                "user_id": reply.user_id,
                "text": reply.reply.text,
            }
    fields["text"] = fields["text"][:TEXT_PREVIEW]
    return DeadLetter(
        message_id=message.message_id or "",
        queue=_text(death.get("queue")),
        reason=_text(death.get("reason")),
        deaths=int(death.get("count") or 1),
        died_at=died.timestamp() if isinstance(died, datetime) else None,
        exchange=_text(death.get("exchange")),
        routing_key=_text(routing_keys[0]) if routing_keys else "",
        **fields,
    )


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
            letters = await self._scan(lambda _: False, limit)
            self._seen = (depth if depth is not None else -1, time.monotonic(), letters)
            return letters

    async def replay(self, message_id: str) -> DeadLetter:
        """Send one dead letter back where it came from; raises ReplayError or BROKER_ERRORS."""
        async with self._lock:
            self._seen = None
            letters = await self._scan(lambda letter: letter.message_id == message_id, SCAN_LIMIT)
        if not letters or letters[-1].message_id != message_id:
            raise ReplayError(f"message_id: {message_id!r} is not in the dead-letter queue")
        return letters[-1]

    async def _scan(self, replay_if: Callable[[DeadLetter], bool], limit: int) -> list[DeadLetter]:
        """Get up to `limit` messages; replay (and stop at) the first that `replay_if` picks; return the
        others. Everything not replayed goes back to the queue."""
        channel = await self._broker.connection.channel(publisher_confirms=False)
        held: list[AbstractIncomingMessage] = []
        letters: list[DeadLetter] = []
        try:
            queue = await channel.declare_queue(self._broker.names.dead_letter_queue, passive=True, robust=False)
            while len(held) < limit:
                message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
                if message is None:
                    break
                letter = describe(message)
                letters.append(letter)
                if replay_if(letter):
                    try:
                        await self._republish(message, letter)
                    except BaseException:
                        held.append(message)
                        raise
                    await message.ack()
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
        names = self._broker.names
        exchange, routing_key = letter.exchange, letter.routing_key
        if exchange not in (names.inbound_exchange, names.replies_exchange):
            if letter.kind != "inbound":
                raise ReplayError(f"message_id: {letter.message_id!r} names no exchange of this deployment")
            exchange, routing_key = names.inbound_exchange, str(names.shard_of(letter.conversation_id))
        if letter.kind == "inbound":
            await self._redis.delete(names.attempts_key(letter.message_id))
        headers = {k: v for k, v in message.headers.items() if k not in _DEATH_HEADERS}
        await self._broker.publish(
            exchange, routing_key, message.body, message_id=letter.message_id, headers=headers, mandatory=True
        )
