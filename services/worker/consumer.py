"""Consuming the shard queues: one channel and one sequential task per owned shard.

Within a shard, deliveries are processed strictly one after another (aio-pika runs callbacks
concurrently, so the callback only buffers; a single task drains the buffer). Shards run in
parallel. Giving a shard up closes its channel: the broker then returns the buffered, unacked
messages and removes the consumer in one step, so the next consumer starts with them, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from services.worker.ownership import owned_shards
from services.worker.processor import MAX_BACKOFF_S, Processor
from shared.broker import BROKER_ERRORS, Broker, declare_shard_queue
from shared.store import REDIS_ERRORS, Store

log = logging.getLogger(__name__)

PREFETCH_PER_SHARD = 8


def _still_held(delivery: AbstractIncomingMessage) -> bool:
    """False for a delivery whose channel was closed: the broker has requeued it already."""
    try:
        return not delivery.channel.is_closed
    except ChannelInvalidStateError:
        return False


class ShardSubscription:
    def __init__(self, shard: int, broker: Broker, processor: Processor) -> None:
        self.shard = shard
        self._broker = broker
        self._processor = processor
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._busy = asyncio.Lock()
        self._channel: AbstractChannel | None = None
        self._task: asyncio.Task[None] | None = None
        self.broken = False  # lost its channel for good; the balancer replaces it

    async def start(self) -> None:
        await self._subscribe()
        self._task = asyncio.create_task(self._drain(), name=f"shard-{self.shard}")

    async def _subscribe(self) -> None:
        channel = await self._broker.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=PREFETCH_PER_SHARD)
        queue = await declare_shard_queue(channel, self._broker.names, self.shard)
        self._channel = channel
        await queue.consume(self._buffer_delivery)

    async def _close_channel(self) -> None:
        """The broker returns every unacked delivery of the channel, in order, and drops the
        consumer in the same step: nothing can overtake what we held."""
        if self._channel is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await self._channel.close()

    async def _buffer_delivery(self, delivery: AbstractIncomingMessage) -> None:
        # No await before the put: callbacks start in delivery order, so the buffer keeps it.
        self._buffer.put_nowait(delivery)

    def _next_batch(self, first: AbstractIncomingMessage) -> list[AbstractIncomingMessage]:
        batch = [first]
        while len(batch) < self._processor.batch_limit and not self._buffer.empty():
            batch.append(self._buffer.get_nowait())
        return [delivery for delivery in batch if _still_held(delivery)]

    async def _drain(self) -> None:
        while True:
            first = await self._buffer.get()
            # DEBOUNCE_MS: let the rest of a burst arrive, so that one reply answers it.
            delay = self._processor.debounce_delay(first)
            if delay > 0:
                await asyncio.sleep(delay)
            batch = self._next_batch(first)
            async with self._busy:
                try:
                    pause = await self._processor.handle(batch)
                except BROKER_ERRORS as exc:
                    # Without the broker there is no ack; the deliveries come back and the
                    # processor re-sends the stored replies.
                    log.warning("shard %d: broker error mid-batch, it will be redelivered: %s", self.shard, exc)
                    continue
                except Exception:
                    # A bug must not stall the shard for good: hand everything back and go on.
                    log.exception("shard %d: unexpected error; returning the batch to the queue", self.shard)
                    pause = MAX_BACKOFF_S
                if pause is not None:
                    await self._retry_later(pause)

    async def _retry_later(self, pause: float) -> None:
        """A message failed: give it and all that follows back, wait, and take them again."""
        await self._close_channel()
        await asyncio.sleep(pause)
        try:
            await self._subscribe()
        except BROKER_ERRORS as exc:
            # The robust connection is reconnecting; the balancer subscribes this shard again.
            log.warning("shard %d: could not subscribe again yet: %s", self.shard, exc)
            self.broken = True

    async def stop(self, grace_s: float) -> None:
        """Finish the batch in hand (within the grace), then close the channel; the broker
        requeues whatever was buffered."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._busy.acquire(), grace_s)
            except TimeoutError:
                log.warning(
                    "shard %d: in-flight work not finished in %.0fs; it will be redelivered", self.shard, grace_s
                )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_channel()


class ShardConsumer:
    """Keeps this worker subscribed to exactly the shards it owns among the live workers."""

    def __init__(
        self, broker: Broker, store: Store, processor: Processor, instance_id: str, heartbeat_ttl_s: float
    ) -> None:
        self._broker = broker
        self._store = store
        self._processor = processor
        self._instance_id = instance_id
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._subscriptions: dict[int, ShardSubscription] = {}

    @property
    def shards(self) -> list[int]:
        return sorted(self._subscriptions)

    async def run(self, interval_s: float) -> None:
        await self._broker.wait_ready()
        while True:
            try:
                await self._rebalance()
            except BROKER_ERRORS as exc:
                log.warning("rebalance postponed, broker unavailable: %s", exc)
            await asyncio.sleep(interval_s)

    async def _rebalance(self) -> None:
        try:
            live = await self._store.live_instances(self._heartbeat_ttl_s)
            workers = [beat["instance"] for beat in live if beat.get("name") == "worker"]
        except REDIS_ERRORS:
            return  # keep what we have; with no view of the others, changing would only guess
        wanted = owned_shards(self._instance_id, workers, self._broker.names.shards)
        for shard in [shard for shard, subscription in self._subscriptions.items() if subscription.broken]:
            await self._subscriptions.pop(shard).stop(grace_s=0)
        if wanted == set(self._subscriptions):
            return
        for shard in sorted(set(self._subscriptions) - wanted):
            await self._subscriptions.pop(shard).stop(grace_s=30.0)
        for shard in sorted(wanted - set(self._subscriptions)):
            subscription = ShardSubscription(shard, self._broker, self._processor)
            await subscription.start()
            self._subscriptions[shard] = subscription
        log.info("consuming shards %s", self.shards, extra={"workers": len(set(workers) | {self._instance_id})})

    async def stop(self, grace_s: float) -> None:
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        await asyncio.gather(*(subscription.stop(grace_s) for subscription in subscriptions))
