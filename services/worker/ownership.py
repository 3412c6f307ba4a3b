"""Which shards this worker consumes: an even split of them over the live workers, and shards lent
for a while by a worker with a backlog to one with room.

The even split. Every worker computes the same answer from the same heartbeats, with no
coordination beyond them. Plain rendezvous hashing (each shard to the worker that weighs most for
it) moves little when a worker joins or leaves, but splits unevenly: with 16 shards and 2 workers
one often got 10 or 11, so it received about two thirds of the conversations and its
WORKER_CONCURRENCY ran out while the other's sat idle. Here each worker takes at most its fair
share: `shards // workers`, and the first `shards % workers` to fill up one more. The (worker,
shard) pairs are taken from the heaviest down, so a shard still goes to the worker that prefers it
most among those with room, and a join or a leave moves little more than the shards that must move
(about 1.3 times that, simulated).

Lending. An even split of the shards is not an even split of the messages: conversations hash to
shards, and a burst of 160 conversations over 2 workers often puts 90 or more on one of them, which
then needs one more round of its WORKER_CONCURRENCY slots while the other idles. So a worker whose
backlog is more than one round of its slots (`need`) lends some of its own shards with waiting
messages to the peer with the most room for its next round. A burst that fills both workers' next
rounds exactly needs exactly `need` messages moved, which whole shards seldom make when `need` is
small, so the lender may also take some of the peer's own shards in exchange (`swap`: the smallest
difference that covers the need within the room, then the fewest messages moved). A lent shard is
a `Move` in Redis; it holds while its `giver` is still the shard's owner under the even split and
the taker is live. The lender writes both sides of an exchange in one step, the peer's shards with
the peer as giver: the peer hands them over exactly as if it had lent them (below), so who wrote
a record does not matter to order or to exactly-once. The taker gives a shard back once it holds
nothing of it (or, under steady traffic, once nothing waits in it and it has had it for
`RETURN_AFTER_S`). So the "at most one shard more than an even split" property holds in the steady
state; only while a backlog is being worked off may a worker consume more shards or fewer.

A shard moves the way it does on a join or a leave: the giver starts nothing more of it, lets the
units in hand finish, then closes its channel, and the broker hands the rest, in order, to the
taker (whose consumer was waiting). The queues' single-active-consumer flag is the safety net while
views differ for a moment: two workers subscribed to one shard never both consume.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

# A lent shard goes back to its owner after this long even under steady traffic, once nothing of
# it waits (it goes back at once when the taker holds nothing of it). Longer than a giver may take
# to hand a shard over (consumer.HANDOVER_GRACE_S).
RETURN_AFTER_S = 40.0


def _weight(worker: str, shard: int) -> bytes:
    return hashlib.blake2b(f"{worker}/{shard}".encode(), digest_size=8).digest()


@dataclass(frozen=True, slots=True)
class Move:
    """A shard lent by its owner under the even split (`giver`) to `taker`, at `at` (epoch s).
    Written by the lender, also for the shards it takes in exchange (then `giver` is the peer)."""

    giver: str
    taker: str
    at: float
    waiting: int = 0  # messages waiting in it when it was lent (the taker's room it will use)

    def to_json(self) -> bytes:
        return orjson.dumps({"giver": self.giver, "taker": self.taker, "at": self.at, "waiting": self.waiting})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Move | None:
        try:
            data = orjson.loads(raw)
            return cls(str(data["giver"]), str(data["taker"]), float(data["at"]), int(data.get("waiting", 0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def even_assignment(live_workers: Iterable[str], shards: int) -> dict[int, str]:
    """Each shard's owner under the even split: every worker owns `shards // workers` or one more."""
    workers = sorted(set(live_workers))
    if not workers:
        return {}
    share, extra = divmod(shards, len(workers))
    owned = dict.fromkeys(workers, 0)
    owners: dict[int, str] = {}
    pairs = sorted(((_weight(w, s), w, s) for w in workers for s in range(shards)), reverse=True)
    for _, worker, shard in pairs:
        if shard in owners or owned[worker] > share or (owned[worker] == share and extra == 0):
            continue
        if owned[worker] == share:
            extra -= 1  # this worker takes one of the shards left over by the even split
        owned[worker] += 1
        owners[shard] = worker
    return owners


def valid_moves(owners: Mapping[int, str], moves: Mapping[int, Move]) -> dict[int, Move]:
    """The moves that hold under `owners` (the even split of the live workers): given by the
    shard's owner to another live worker."""
    live = set(owners.values())
    return {
        shard: move
        for shard, move in moves.items()
        if owners.get(shard) == move.giver and move.taker in live and move.taker != move.giver
    }


def assignment(live_workers: Iterable[str], shards: int, moves: Mapping[int, Move] | None = None) -> dict[int, str]:
    """Each shard's consumer: the even split, with the shards lent (`moves`) at their takers."""
    owners = even_assignment(live_workers, shards)
    for shard, move in valid_moves(owners, moves or {}).items():
        owners[shard] = move.taker
    return owners


def owned_shards(
    me: str, live_workers: Iterable[str], shards: int, moves: Mapping[int, Move] | None = None
) -> set[int]:
    owners = assignment(set(live_workers) | {me}, shards, moves)
    return {shard for shard, owner in owners.items() if owner == me}


def need(waiting: int, limit: int) -> int:
    """Messages more than one round of the worker's slots can start: what it should lend."""
    return max(0, waiting - limit)


def room(limit: int, waiting: int, incoming: int = 0) -> int:
    """Messages a worker can start in its next round beyond its own (and those being lent to it)."""
    return max(0, limit - waiting - incoming)


def _subset_sums(waiting: Mapping[int, int], cap: int) -> dict[int, tuple[int, ...]]:
    """Every total up to `cap` that some set of the shards' waiting counts makes, with the first
    such set (shards taken in order, so the answer is deterministic)."""
    sums: dict[int, tuple[int, ...]] = {0: ()}
    for shard in sorted(waiting):
        count = waiting[shard]
        if count <= 0 or count > cap:
            continue
        for total, chosen in list(sums.items()):
            if total + count <= cap and total + count not in sums:
                sums[total + count] = (*chosen, shard)
    return sums


def swap(mine: Mapping[int, int], theirs: Mapping[int, int], wanted: int, room: int) -> tuple[set[int], set[int]]:
    """Which of the lender's shards (`mine`) to lend and which of the taker's own (`theirs`) to take
    in exchange, given the messages waiting in each: the lender's backlog drops by the difference,
    which should cover `wanted` within the taker's `room`. A burst that exactly fills the next
    rounds of both needs the difference to be exactly `wanted` (one message more is a whole extra
    round), and a one-sided lend rarely hits a small `wanted` exactly with whole shards; an
    exchange does far more often. Preference: the smallest difference that covers `wanted` (else
    the largest within `room`), then the fewest messages moved (so a one-sided lend when it is
    exact). Deterministic."""
    if wanted <= 0 or room <= 0:
        return set(), set()
    given = _subset_sums(mine, room + sum(c for c in theirs.values() if c > 0))
    totals = sorted(given)
    taken = _subset_sums(theirs, totals[-1] - 1)  # taking back as much as is given is no exchange
    best: tuple[tuple[int, int, int], int, int] | None = None  # (rank, given total, taken total)
    for back in taken:
        # The smallest total to give that covers `wanted` with this much taken back, within room.
        i = bisect.bisect_left(totals, back + wanted)
        if i < len(totals) and totals[i] <= back + room:
            rank = (0, totals[i] - back, totals[i] + back)
            out = totals[i]
        else:  # none covers it: the largest that fits
            j = bisect.bisect_right(totals, back + room) - 1
            if totals[j] <= back:
                continue
            rank = (1, back - totals[j], totals[j] + back)
            out = totals[j]
        if best is None or rank < best[0]:
            best = (rank, out, back)
    if best is None:
        return set(), set()
    return set(given[best[1]]), set(taken[best[2]])
