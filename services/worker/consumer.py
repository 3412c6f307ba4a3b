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
Giving a shard up (rebalance, lending it, shutdown) lets the lanes finish the unit in hand (the lanes
only waiting for a slot leave at once), then closes the channel: the broker returns the rest, in
order, and drops the consumer in the same step, so the next owner starts with them.

With other workers live, a few times a second each worker publishes its backlog (with what waits
in each shard of its own share) and lends shards it has too much waiting in to the peer with the
most room, taking some of the peer's in exchange when that evens them out exactly (ownership.py); a
single worker does none of this. A dropped broker connection makes the old channel's deliveries
worthless (unackable, already requeued): lanes skip them, and the restored consumer brings them
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from services.worker.acks import ChannelAcks, still_held
from services.worker.ownership import RETURN_AFTER_S, Move, even_assignment, need, owned_shards, room, swap, valid_moves
from services.worker.processor import MAX_BACKOFF_S, Processor
from services.worker.settle import Received, RetryAfter, Settlement
from shared.broker import BROKER_ERRORS, Broker, declare_shard_queue
from shared.store import REDIS_ERRORS, Store

log = logging.getLogger(__name__)

# How long a shard given up to another worker may take to finish the units in hand.
HANDOVER_GRACE_S = 30.0
# With peers, how often the backlogs are compared (and a worker's own published, for twice that).
BALANCE_TICK_S = 0.2
BALANCE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, *BROKER_ERRORS)


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
        # A quarter of the prefetch: settled deliveries waiting for their ack still count in it.
        self._acks = ChannelAcks(flush_at=max(1, capacity.limit // 4))
        self._settlement = Settlement(shard=shard, acks=self._acks, store=processor.store, metrics=processor.metrics)
        self._stopping = False
        self._working: set[asyncio.Task[Any]] = set()  # lanes inside a unit (holding a slot)
        self._in_unit = 0  # deliveries in those units
        self._delivered = False  # whether anything came yet

    @property
    def delivered(self) -> bool:
        return self._delivered

    @property
    def held(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    @property
    def waiting(self) -> int:
        """Deliveries in hand that no unit is working on yet."""
        return self.held - self._in_unit

    def done_with(self, since: float) -> bool:
        """Whether a shard lent to this worker at `since` can go back: it brought its backlog and
        nothing of it is in hand (or, under steady traffic, nothing waits and it has been here
        RETURN_AFTER_S, which is longer than the giver may take to hand it over)."""
        if self.waiting:
            return False
        return (self._delivered and not self.held) or time.time() - since > RETURN_AFTER_S

    async def start(self) -> None:
        channel = await self._broker.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._capacity.limit)
        queue = await declare_shard_queue(channel, self._broker, self.shard)
        self._channel = channel
        await queue.consume(self._on_delivery)

    async def _on_delivery(self, delivery: AbstractIncomingMessage) -> None:
        # No await before the append: callbacks start in delivery order, so each lane keeps it.
        received = Received.parse(delivery)
        self._delivered = True
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
                task = asyncio.current_task()
                working = {task} if task is not None else set()
                self._working |= working
                self._in_unit += len(unit)
                try:
                    outcome = await self._processor.handle(unit)
                    return await self._settlement.apply(outcome)
                finally:
                    self._in_unit -= len(unit)
                    self._working -= working
        except Exception:
            # A bug must not stall the conversation for good: it counts as a failed attempt at the
            # message, retried in place after a pause, then dead-lettered (in-place retries are no
            # redeliveries: the queue's delivery limit never sees them).
            log.exception("shard %d: unexpected error handling a message", self.shard)
            try:
                outcome = await self._processor.failed_unexpectedly(unit)
            except Exception:
                log.exception("shard %d: the failure could not be counted; retrying the message", self.shard)
                outcome = RetryAfter(MAX_BACKOFF_S)
            return await self._settlement.apply(outcome)

    async def stop(self, grace_s: float) -> None:
        """Let the lanes finish the unit in hand (within the grace), then close the channel: the
        broker requeues whatever was not acked, in order."""
        self._stopping = True
        for task in self._tasks - self._working:
            task.cancel()  # waiting for a slot, a pause or the rest of a burst: nothing in hand
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
    """Keeps this worker subscribed to exactly the shards it consumes among the live workers: its
    share of the even split, less the shards it lent, plus the shards lent to it (ownership.py)."""

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
        self._rebalancing = asyncio.Lock()
        self._peers: list[str] = []  # the other live workers, as of the last rebalance
        self._owners: dict[int, str] = {}  # the even split, as of the last rebalance
        self._moves: dict[int, Move] = {}  # the moves that held at the last rebalance
        # This worker's backlog at the last balance tick, and since when it has been that.
        self._last_waiting, self._steady_since = 0, 0.0

    @property
    def shards(self) -> list[int]:
        return sorted(self._subscriptions)

    @property
    def held(self) -> int:
        """Deliveries in hand, waiting or being worked on."""
        return sum(subscription.held for subscription in self._subscriptions.values())

    @property
    def waiting(self) -> int:
        """Deliveries in hand that no unit is working on yet."""
        return sum(subscription.waiting for subscription in self._subscriptions.values())

    @property
    def backlog(self) -> int:
        """What waits here, and what waits in the shards lent to this worker that have brought
        nothing yet (their giver is finishing its units in hand): what the next rounds will start.
        Without the latter a lender would still see room here and lend the same room twice."""
        coming = sum(
            move.waiting
            for shard, move in self._moves.items()
            if move.taker == self._instance_id
            and not (shard in self._subscriptions and self._subscriptions[shard].delivered)
        )
        return self.waiting + coming

    @property
    def lent(self) -> dict[str, str]:
        """Shards moved for their backlog (ownership.py), as of the last rebalance: shard -> taker."""
        return {str(shard): move.taker for shard, move in sorted(self._moves.items())}

    async def run(self, interval_s: float) -> None:
        await self._broker.wait_ready()
        while True:
            try:
                await self._rebalance()
            except BROKER_ERRORS as exc:
                log.warning("rebalance postponed, broker unavailable: %s", exc)
            await asyncio.sleep(interval_s)

    async def _rebalance(self) -> None:
        async with self._rebalancing:
            try:
                live = await self._store.live_instances(self._heartbeat_ttl_s)
                workers = {beat["instance"] for beat in live if beat.get("name") == "worker"} | {self._instance_id}
                moves = await self._read_moves() if len(workers) > 1 else {}
            except REDIS_ERRORS:
                return  # keep what we have; with no view of the others, changing would only guess
            shards = self._broker.names.shards
            self._peers = sorted(workers - {self._instance_id})
            self._owners = even_assignment(workers, shards)
            self._moves = valid_moves(self._owners, moves)
            wanted = owned_shards(self._instance_id, workers, shards, self._moves)
            if wanted == set(self._subscriptions):
                return
            leaving = [self._subscriptions.pop(shard) for shard in sorted(set(self._subscriptions) - wanted)]
            if leaving:
                self._hand_over(leaving)
            for shard in sorted(wanted - set(self._subscriptions)):
                await self._take(shard)
            log.info(
                "consuming shards %s",
                self.shards,
                extra={"workers": len(workers), "lent": self.lent},
            )

    async def _read_moves(self) -> dict[int, Move]:
        raw = await self._store.redis.hgetall(self._broker.names.shard_moves_key)
        moves = {}
        for field_name, value in raw.items():
            move = Move.from_json(value)
            if move is not None and str(field_name).isdigit():
                moves[int(field_name)] = move
        return moves

    def _hand_over(self, leaving: list[ShardSubscription]) -> None:
        """Give shards up: their lanes finish the unit in hand, then their channels close. In the
        background, so a lent shard does not hold up the rebalance; a stop of the worker meanwhile
        waits for it (and taking a shard back before it is closed is safe: the queue's single
        active consumer switches only once the old channel is gone)."""
        handover = asyncio.gather(*(subscription.stop(grace_s=HANDOVER_GRACE_S) for subscription in leaving))
        self._handovers.add(handover)
        handover.add_done_callback(self._handovers.discard)

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

    async def balance(self) -> None:
        """Weigh the backlogs a few times a second (lending, exchanging, giving back); idle until
        the first rebalance has seen other workers."""
        while True:
            await asyncio.sleep(BALANCE_TICK_S)
            if not self._peers:
                continue  # alone: nothing to compare, nothing published
            try:
                if await self._balance():
                    await self._rebalance()
            except BALANCE_ERRORS as exc:
                log.debug("backlog balance skipped: %r", exc)

    async def _balance(self) -> bool:
        """Publish this worker's backlog, give back lent shards it is done with, and lend shards
        when its backlog is more than a round of its slots. True when a move was written or
        removed (then the rebalance applies it at once)."""
        names, redis, me = self._broker.names, self._store.redis, self._instance_id
        now, waiting = time.time(), self.backlog
        if waiting != self._last_waiting:
            self._last_waiting, self._steady_since = waiting, now
        # "steady": unchanged for a tick. A burst still landing is not weighed: a peer's record
        # from before it would show room that is not there.
        steady = now - self._steady_since >= BALANCE_TICK_S
        load = {
            "waiting": waiting,
            "limit": self.capacity.limit,
            "shards": self.shards,
            "own": {str(shard): count for shard, count in self._own_waiting().items()},  # what a lender may take
            "at": now,
            "steady": steady,
        }
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(names.worker_load_key(me), orjson.dumps(load), px=int(BALANCE_TICK_S * 2000 + 500))
            pipe.mget([names.worker_load_key(peer) for peer in self._peers])
            pipe.hgetall(names.shard_moves_key)
            _, peer_loads, raw_moves = await pipe.execute()
        moves = {int(k): m for k, v in raw_moves.items() if str(k).isdigit() and (m := Move.from_json(v)) is not None}
        if valid_moves(self._owners, moves) != self._moves:
            return True  # someone lent or gave back a shard: take the new view first
        changed = await self._give_back(moves)
        if not steady:
            return changed
        loads = {peer: orjson.loads(raw) for peer, raw in zip(self._peers, peer_loads, strict=True) if raw}
        settled = {
            p: load for p, load in loads.items() if load.get("steady") and load.get("at", 0) >= self._steady_since
        }
        return await self._lend(moves, settled) or changed

    async def _give_back(self, moves: dict[int, Move]) -> bool:
        """A lent shard goes back to its owner once this worker holds nothing of it (or, with
        traffic, once nothing waits in it and it has been here RETURN_AFTER_S)."""
        done = [
            shard
            for shard, move in self._moves.items()
            if move.taker == self._instance_id
            and shard in self._subscriptions
            and self._subscriptions[shard].done_with(since=move.at)
        ]
        # Lent to a worker that is gone: the shard is back here already; the record goes too.
        stale = [s for s, m in moves.items() if m.giver == self._instance_id and s not in self._moves]
        if done or stale:
            await self._store.redis.hdel(self._broker.names.shard_moves_key, *(str(s) for s in done + stale))
        return bool(done)

    def _own_waiting(self) -> dict[int, int]:
        """What waits in each shard of this worker's own share that it consumes (not lent out)."""
        return {
            shard: subscription.waiting
            for shard, subscription in self._subscriptions.items()
            if self._owners.get(shard) == self._instance_id and shard not in self._moves
        }

    async def _lend(self, moves: dict[int, Move], loads: dict[str, Any]) -> bool:
        """Lend shards of this worker's own share when it has more waiting than one round of its
        slots starts, to the peer with the most room for its next round, maybe taking some of the
        peer's own shards in exchange (ownership.swap)."""
        wanted = need(self.backlog, self.capacity.limit)
        if not wanted:
            return False
        rooms = {}
        for peer, load in loads.items():
            consuming = set(load.get("shards", []))
            incoming = sum(m.waiting for s, m in self._moves.items() if m.taker == peer and s not in consuming)
            rooms[peer] = room(int(load.get("limit", 0)), int(load.get("waiting", 0)), incoming)
        if not rooms:
            return False
        taker = max(sorted(rooms), key=lambda peer: rooms[peer])
        mine = self._own_waiting()
        # The taker's own shards as it published them, if our views of the split and the moves agree.
        theirs = {
            int(shard): int(count)
            for shard, count in loads[taker].get("own", {}).items()
            if self._owners.get(int(shard)) == taker and int(shard) not in moves
        }
        chosen, taken = swap(mine, theirs, wanted, rooms[taker])
        if not chosen:
            return False
        now, me = time.time(), self._instance_id
        # Both sides in one write. The taker's shards are written with the taker as giver, the
        # owner under the even split, so they hold like any move it made; the taker hands them
        # over as it would its own lend (units in hand finish, then its channel closes).
        written = {str(shard): Move(me, taker, now, mine[shard]) for shard in chosen}
        written |= {str(shard): Move(taker, me, now, theirs[shard]) for shard in taken}
        await self._store.redis.hset(
            self._broker.names.shard_moves_key, mapping={k: m.to_json() for k, m in written.items()}
        )
        log.info(
            "lending shards %s to %s for their backlog, taking %s",
            sorted(chosen),
            taker,
            sorted(taken),
            extra={
                "waiting": self.backlog,
                "need": wanted,
                "room": rooms[taker],
                "lent": sum(mine[s] for s in chosen) - sum(theirs[s] for s in taken),
            },
        )
        return True

    async def stop(self, grace_s: float) -> None:
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        await asyncio.gather(*self._handovers, *(subscription.stop(grace_s) for subscription in subscriptions))
