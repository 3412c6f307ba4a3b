"""Which shards this worker consumes: rendezvous hashing with bounded loads over the live workers.

Every worker computes the same answer from the same heartbeats, with no coordination beyond them.
Plain rendezvous hashing (each shard to the worker that weighs most for it) moves little when a
worker joins or leaves, but splits unevenly: with 16 shards and 2 workers one often got 10 or 11,
so it received about two thirds of the conversations and its WORKER_CONCURRENCY ran out while the
other's sat idle. Here each worker takes at most its fair share: `shards // workers`, and the
first `shards % workers` to fill up one more. The (worker, shard) pairs are taken from the heaviest
down, so a shard still goes to the worker that prefers it most among those with room, and a join
or a leave moves little more than the shards that must move (about 1.3 times that, simulated).

The queues' single-active-consumer flag is the safety net while views differ for a moment: two
workers subscribed to one shard never both consume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(worker: str, shard: int) -> bytes:
    return hashlib.blake2b(f"{worker}/{shard}".encode(), digest_size=8).digest()


def assignment(live_workers: Iterable[str], shards: int) -> dict[int, str]:
    """Each shard's owner: every worker owns `shards // workers` or one more."""
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


def owned_shards(me: str, live_workers: Iterable[str], shards: int) -> set[int]:
    owners = assignment(set(live_workers) | {me}, shards)
    return {shard for shard, owner in owners.items() if owner == me}
