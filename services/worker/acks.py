"""Settling one shard channel's deliveries: acks sent together, as few frames as the order allows.

Lanes settle their deliveries one by one, each at its own moment. An ack waits up to ACK_LINGER_S
for company (or until `flush_at` acks wait), then the acks asked for meanwhile go out together, as
one `multiple` ack for every tag below the first unsettled one, then single acks for the settled
tags above it, in tag order. So a conversation's settled messages stay a prefix of it even if the
connection drops half-way through the frames, and a slow conversation never holds another's ack.

Why 50 ms: a worker's traffic is spread over its shards, each a quorum queue of its own, and each
ack frame is a command RabbitMQ writes to that queue's log. At 700 messages a second over 16 shards
a shard settles about one message per 10 ms, so a 10 ms linger sent nearly one frame per message;
50 ms sends one for two or three, and RabbitMQ's CPU a message fell by 10-20 %
(docs/performance.md, the acks' round). `flush_at` (a quarter of the prefetch) keeps a busy shard
from holding its prefetch in settled deliveries meanwhile, and a flush (a reject, a handover, a
stop) does not wait for it.

The linger costs nothing a customer sees (the reply is out before its delivery is settled): a
worker killed within it has those few deliveries redelivered, and their stored replies are sent
again, which every outlet already recognises (the delivery ledger, the streams' recent replies).

A tag is acked once: a `multiple` ack names a tag not acked before (one below it may have been;
the broker skips those), since naming one already acked would be an error that closes the channel.

The shard's channel is robust: after a dropped connection it comes back as a new channel whose tags
count from 1 again. Acks are kept for the channel the deliveries came on, and start afresh with the
first delivery of the new one; a delivery of the old channel is not acked at all (it cannot be:
the broker took it back when the connection dropped, and brings it again).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from shared.broker import BROKER_ERRORS

log = logging.getLogger(__name__)

# Idle, an ack is 50 ms late; under load, the acks of that time share one frame.
ACK_LINGER_S = 0.05


@dataclass(slots=True)
class ChannelAcks:
    """One per shard subscription: the acks of its channel, as the channel is now."""

    # How long an ack waits for company, and how many acks waiting send them at once.
    linger_s: float = ACK_LINGER_S
    flush_at: int = 16
    _channel: object = None  # the (underlying) channel the tags below belong to
    _low: int = 1  # every tag below it is settled
    _settled: set[int] = field(default_factory=set)  # settled tags from _low up
    _unsent: dict[int, AbstractIncomingMessage] = field(default_factory=dict)
    _sending: asyncio.Task[None] | None = None
    _full: asyncio.Future[None] | None = None  # resolved to end the linger early
    _hurry: bool = False  # a flush is waiting: no linger until the acks are out

    @property
    def pending(self) -> int:
        """Acks asked for and not sent yet."""
        return len(self._unsent)

    def ack(self, delivery: AbstractIncomingMessage) -> None:
        """Settle a delivery; its ack leaves with the others asked for meanwhile. A channel that
        closes first makes it moot: the broker redelivers, and the stored reply answers it."""
        if not self._holds(delivery):
            return
        tag = _tag(delivery)
        self._settle(tag)
        self._unsent[tag] = delivery
        if self._sending is None:
            self._sending = asyncio.create_task(self._send(), name="acks")
        elif len(self._unsent) >= self.flush_at and self._full is not None:
            _resolve(self._full)

    async def reject(self, delivery: AbstractIncomingMessage) -> None:
        """Dead-letter a delivery now, after the acks before it. Raises BROKER_ERRORS."""
        await self.flush()
        await delivery.reject(requeue=False)
        if self._holds(delivery):
            self._settle(_tag(delivery))

    def _holds(self, delivery: AbstractIncomingMessage) -> bool:
        """Whether the delivery's channel is the live one; the first delivery of a new channel
        (the robust channel restored after a drop) starts its tags afresh."""
        if not still_held(delivery):
            return False
        channel = delivery.channel
        if channel is not self._channel:
            self._channel, self._low, self._settled, self._unsent = channel, 1, set(), {}
        return True

    async def flush(self) -> None:
        """Send every ack asked for so far, now (before the channel is closed, or a reject)."""
        while self._sending is not None:
            self._hurry = True
            if self._full is not None:
                _resolve(self._full)
            await asyncio.shield(self._sending)

    def _settle(self, tag: int) -> None:
        self._settled.add(tag)
        while self._low in self._settled:
            self._settled.discard(self._low)
            self._low += 1

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._unsent:
                if len(self._unsent) < self.flush_at and not self._hurry:
                    self._full = loop.create_future()
                    timer = loop.call_later(self.linger_s, _resolve, self._full)
                    try:
                        await self._full
                    finally:
                        timer.cancel()
                        self._full = None
                await self._send_batch()
        finally:
            self._sending, self._hurry = None, False

    async def _send_batch(self) -> None:
        below = [tag for tag in self._unsent if tag < self._low]
        above = sorted(tag for tag in self._unsent if tag >= self._low)
        batch = [(self._unsent.pop(max(below)), True)] if below else []
        for tag in below:
            self._unsent.pop(tag, None)
        batch += [(self._unsent.pop(tag), False) for tag in above]
        try:
            for delivery, multiple in batch:
                await delivery.ack(multiple=multiple)
        except BROKER_ERRORS as exc:
            log.debug("acks not sent, the channel is gone (the broker redelivers): %r", exc)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def still_held(delivery: AbstractIncomingMessage) -> bool:
    """False for a delivery whose channel was closed (the connection dropped, or the shard was
    given up): the broker has requeued it already, and it can no longer be acked."""
    try:
        return not delivery.channel.is_closed
    except ChannelInvalidStateError:
        return False


def _tag(delivery: AbstractIncomingMessage) -> int:
    if delivery.delivery_tag is None:  # only a no-ack consumer's deliveries have none
        raise ValueError("a delivery to settle has a delivery tag")
    return delivery.delivery_tag
