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
messages to the peer with the most room for its next round (`lend`: the fewest messages that cover
the need, else as many as fit). A lent shard is a `Move` in Redis, written by the shard's owner;
it holds while the owner is still the shard's owner under the even split and the taker is live.
The taker gives it back once it holds nothing of it (or, under steady traffic, once nothing waits
in it and it has had it for `RETURN_AFTER_S`). So the "at most one shard more than an even split"
property holds in the steady state; only while a backlog is being worked off may a worker consume
more shards or fewer.

A shard moves the way it does on a join or a leave: the giver starts nothing more of it, lets the
units in hand finish, then closes its channel, and the broker hands the rest, in order, to the
taker (whose consumer was waiting). The queues' single-active-consumer flag is the safety net while
views differ for a moment: two workers subscribed to one shard never both consume.
"""

from __future__ import annotations

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
    """A shard lent by its owner under the even split (`giver`) to `taker`, at `at` (epoch s)."""

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


def lend(waiting: Mapping[int, int], wanted: int, room: int) -> set[int]:
    """Which shards to lend, given the messages waiting in each: the fewest messages that cover
    `wanted` within `room`; when no set of shards does, as many as fit in `room`. Deterministic
    (a subset-sum over the waiting counts, shards taken in order)."""
    if wanted <= 0 or room <= 0:
        return set()
    best: dict[int, tuple[int, ...]] = {0: ()}
    for shard in sorted(waiting):
        count = waiting[shard]
        if count <= 0 or count > room:
            continue
        for total, chosen in list(best.items()):
            if total + count <= room and total + count not in best:
                best[total + count] = (*chosen, shard)
    covering = [total for total in best if total >= wanted]
    return set(best[min(covering) if covering else max(best)])
