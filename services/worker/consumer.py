"""Consuming the shard queues: per-conversation lanes, run concurrently under one worker-wide limit.

Shards give each conversation one owner (single-active-consumer queues); they do not bound how
many replies are generated at once. Inside a shard, each delivery goes to its conversation's lane:
a lane handles its messages one after another and settles each before the next, so what is
settled of a conversation is always a prefix of it, and a redelivery resumes it in order (the acks
of all lanes leave together, in tag order: services/worker/acks.py). Lanes of all
conversations and shards run at once, at most WORKER_CONCURRENCY of them generating.

Prefetch: each shard channel may hold WORKER_CONCURRENCY unacked deliveries, enough to feed every
slot from one shard; the worker never holds more than shards owned x WORKER_CONCURRENCY.

A failing message holds only its lane: it is retried in place after a back-off, then dead-lettered.
Each delivery is parsed once, as it arrives; what becomes of a unit is the processor's outcome,
carried out by the lane's settlement (settle.py).
Giving a shard up (rebalance, shutdown) lets the lanes finish the unit in hand, then closes the
channel: the broker returns the rest, in order, and drops the consumer in the same step, so the
next owner starts with them. A dropped broker connection makes the old channel's deliveries
worthless (unackable, already requeued): lanes skip them, and the restored consumer brings them
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from services.worker.acks import ChannelAcks, still_held
from services.worker.ownership import owned_shards
from services.worker.processor import MAX_BACKOFF_S, Processor
from services.worker.settle import Received, RetryAfter, Settlement
from shared.broker import BROKER_ERRORS, Broker, declare_shard_queue
from shared.store import REDIS_ERRORS, Store

log = logging.getLogger(__name__)

# How long a shard given up to another worker may take to finish the units in hand.
HANDOVER_GRACE_S = 30.0


@dataclass(slots=True)
class Capacity:
    """The worker-wide limit on units in hand (WORKER_CONCURRENCY), and how many are in use."""

    limit: int
    in_flight: int = 0
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1


class ShardSubscription:
    def __init__(self, shard: int, broker: Broker, processor: Processor, capacity: Capacity) -> None:
        self.shard = shard
        self._broker = broker
        self._processor = processor
        self._capacity = capacity
        self._lanes: dict[str, deque[Received]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: AbstractChannel | None = None
        self._acks = ChannelAcks()
        self._settlement = Settlement(shard=shard, acks=self._acks, store=processor.store, metrics=processor.metrics)
        self._stopping = False

    @property
    def held(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    async def start(self) -> None:
        channel = await self._broker.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._capacity.limit)
        queue = await declare_shard_queue(channel, self._broker, self.shard)
        self._channel = channel
        await queue.consume(self._on_delivery)

    async def _on_delivery(self, delivery: AbstractIncomingMessage) -> None:
        # No await before the append: callbacks start in delivery order, so each lane keeps it.
        received = Received.parse(delivery)
        key = received.lane
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(received)
            return
        self._lanes[key] = deque([received])
        if not self._stopping:
            task = asyncio.create_task(self._run_lane(key), name=f"shard-{self.shard}-lane")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_lane(self, key: str) -> None:
        lane = self._lanes[key]
        try:
            while lane and not self._stopping:
                if not still_held(lane[0].delivery):
                    lane.popleft()  # its channel is gone; the broker brings it again
                    continue
                delay = self._processor.debounce_delay(lane[0])
                if delay > 0:
                    await asyncio.sleep(delay)  # DEBOUNCE_MS: let the rest of the burst arrive
                unit = [lane[i] for i in range(self._processor.unit_size(list(lane)))]
                await self._settle(unit)
                for _ in unit:
                    lane.popleft()
        finally:
            if not self._stopping:
                self._lanes.pop(key, None)

    async def _settle(self, unit: list[Received]) -> None:
        """Run one unit until the settlement is done with it, retrying in place after each pause."""
        while not self._stopping:
            pause = await self._attempt(unit)
            if pause is None:
                return
            await asyncio.sleep(pause)

    async def _attempt(self, unit: list[Received]) -> float | None:
        """Run the unit once and carry its outcome out: the pause before running it again, or None."""
        try:
            async with self._capacity.slot():
                if self._stopping:
                    return None  # the shard was given up while this waited; its channel returns it
                outcome = await self._processor.handle(unit)
                return await self._settlement.apply(outcome)
        except Exception:
            # A bug must not stall the conversation for good: try again after a pause (the
            # queue's delivery limit dead-letters a message that keeps failing this way).
            log.exception("shard %d: unexpected error; retrying the message", self.shard)
            return await self._settlement.apply(RetryAfter(MAX_BACKOFF_S))

    async def stop(self, grace_s: float) -> None:
        """Let the lanes finish the unit in hand (within the grace), then close the channel: the
        broker requeues whatever was not acked, in order."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if pending:
                log.warning(
                    "shard %d: %d conversations not finished in %.0fs; they will be redelivered",
                    self.shard,
                    len(pending),
                    grace_s,
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await self._acks.flush()
        if self._channel is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await self._channel.close()
        self._lanes.clear()


class ShardConsumer:
    """Keeps this worker subscribed to exactly the shards it owns among the live workers."""

    def __init__(
        self,
        broker: Broker,
        store: Store,
        processor: Processor,
        instance_id: str,
        heartbeat_ttl_s: float,
        concurrency: int,
    ) -> None:
        self._broker = broker
        self._store = store
        self._processor = processor
        self._instance_id = instance_id
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self.capacity = Capacity(concurrency)
        self._subscriptions: dict[int, ShardSubscription] = {}
        # Shards being given up: a stop of the worker meanwhile waits for them too, so no unit
        # in hand is dropped half-way (it would be generated again by the next owner).
        self._handovers: set[asyncio.Future[list[None]]] = set()

    @property
    def shards(self) -> list[int]:
        return sorted(self._subscriptions)

    @property
    def held(self) -> int:
        """Deliveries in hand, waiting or being worked on."""
        return sum(subscription.held for subscription in self._subscriptions.values())

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
        if wanted == set(self._subscriptions):
            return
        leaving = [self._subscriptions.pop(shard) for shard in sorted(set(self._subscriptions) - wanted)]
        if leaving:
            await self._hand_over(leaving)
        for shard in sorted(wanted - set(self._subscriptions)):
            await self._take(shard)
        log.info("consuming shards %s", self.shards, extra={"workers": len(set(workers) | {self._instance_id})})

    async def _hand_over(self, leaving: list[ShardSubscription]) -> None:
        """Give shards up: their lanes finish the unit in hand, then their channels close. Shielded:
        a stop of the worker arriving meanwhile (which cancels the rebalance) waits for it instead."""
        handover = asyncio.gather(*(subscription.stop(grace_s=HANDOVER_GRACE_S) for subscription in leaving))
        self._handovers.add(handover)
        handover.add_done_callback(self._handovers.discard)
        await asyncio.shield(handover)

    async def _take(self, shard: int) -> None:
        subscription = ShardSubscription(shard, self._broker, self._processor, self.capacity)
        # Listed before it starts, so a stop arriving mid-start reaches it too.
        self._subscriptions[shard] = subscription
        try:
            await subscription.start()
        except BROKER_ERRORS:
            del self._subscriptions[shard]  # the next rebalance tries again
            await subscription.stop(grace_s=0)
            raise

    async def stop(self, grace_s: float) -> None:
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        await asyncio.gather(*self._handovers, *(subscription.stop(grace_s) for subscription in subscriptions))
