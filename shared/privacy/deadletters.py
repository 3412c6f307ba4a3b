"""Dead letters that hold a customer's data, and dead letters past the retention period, taken out of
the dead-letter queue without losing anyone else's.

RabbitMQ cannot delete one message from a queue. `sweep` takes every message that is there when it
starts (`basic.get`, one at a time), acks away those `drop` picks and republishes each other one to
the same queue, with its headers, waiting for the broker's confirm before acking the original: a crash
in between leaves a copy in both places, never in neither. A republished letter keeps when it died
in `DIED_AT_HEADER` (RabbitMQ keeps `x-death` for itself), so retention ages it the same. `look`
reads them all the same way, so looking never counts towards a quorum queue's delivery limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from shared.broker import BROKER_ERRORS, Broker
from shared.messages import InboundMessage, MessageFormatError, ReplyMessage
from shared.privacy import lock

DIED_AT_HEADER = "x-atendimento-died-at"
GET_TIMEOUT_S = 5.0
# A pass over the queue holds the lock at most this long (a holder that died frees it), and one
# waits this long for another's pass to end.
LOCK_S = 300
LOCK_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Letter:
    """What a dead letter says about whose it is and when it died."""

    message_id: str
    kind: str  # "inbound", "reply" or "unreadable"
    conversation_id: str
    user_id: str
    text: str
    died_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "kind": self.kind,
            "conversation_id": self.conversation_id,
            "user_id": self.user_id,
            "text": self.text,
            "died_at": self.died_at,
        }


def read(message: AbstractIncomingMessage) -> Letter:
    conversation, user, text, kind = "", "", "", "unreadable"
    try:
        inbound = InboundMessage.from_bytes(message.body)
        conversation, user, text, kind = inbound.conversation_id, inbound.user_id, inbound.text, "inbound"
    except MessageFormatError:
        with contextlib.suppress(MessageFormatError):
            reply = ReplyMessage.from_bytes(message.body)
            conversation, user, text, kind = reply.conversation_id, reply.user_id, reply.reply.text, "reply"
    return Letter(message.message_id or "", kind, conversation, user, text, _died_at(message.headers))


def _died_at(headers: dict[str, Any]) -> float | None:
    kept = headers.get(DIED_AT_HEADER)
    if isinstance(kept, int | float):
        return float(kept)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        died = deaths[0].get("time")
        if isinstance(died, datetime):
            return died.timestamp()
    return None


async def sweep(broker: Broker, redis: Redis, drop: Callable[[Letter], bool]) -> list[Letter]:
    """Take out of the dead-letter queue every letter `drop` picks; return them. One pass at a time in
    the whole deployment (a lock in Redis): two at once would each miss the letters the other holds.
    Raises BROKER_ERRORS or REDIS_ERRORS (what was done stays done; a letter being moved is then in
    the queue twice at worst), LockBusy when another pass takes too long."""
    async with lock.held(redis, broker.names.dead_letters_lock_key, LOCK_S, LOCK_WAIT_S):
        return await _sweep(broker, drop)


async def _sweep(broker: Broker, drop: Callable[[Letter], bool]) -> list[Letter]:
    queue_name = broker.names.dead_letter_queue
    channel = await broker.connection.channel(publisher_confirms=False)
    dropped: list[Letter] = []
    try:
        queue = await channel.declare_queue(queue_name, passive=True, robust=False)
        waiting = queue.declaration_result.message_count or 0
        for _ in range(waiting):
            message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
            if message is None:  # another consumer holds the rest (a monitor looking): they stay
                break
            letter = read(message)
            if drop(letter):
                dropped.append(letter)
            else:
                await _keep(broker, queue_name, message, letter)
            await message.ack()
    finally:
        with contextlib.suppress(*BROKER_ERRORS):
            await channel.close()  # returns anything unacked after an error
    return dropped


async def _keep(broker: Broker, queue_name: str, message: AbstractIncomingMessage, letter: Letter) -> None:
    headers = dict(message.headers)
    if letter.died_at is not None:
        headers[DIED_AT_HEADER] = letter.died_at
    await broker.publish(
        "",
        queue_name,
        message.body,
        message_id=letter.message_id,
        conversation_id=letter.conversation_id or None,
        headers=headers,
    )


async def look(broker: Broker, redis: Redis) -> list[Letter]:
    """The letters in the dead-letter queue, left there. Each is moved like a sweep keeps it
    (republished, then acked) rather than held and handed back: on quorum queues a message handed
    back counts towards the delivery limit (20 by default since RabbitMQ 4.0), and a customer looked
    up twenty times must not cost anyone their dead letters."""
    seen: list[Letter] = []

    def keep(letter: Letter) -> bool:
        seen.append(letter)
        return False

    await sweep(broker, redis, keep)
    return seen
