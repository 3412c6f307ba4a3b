"""Which shards this worker consumes: rendezvous hashing over the live workers.

Every worker computes the same answer from the same heartbeats, so the shards spread evenly and a
worker that joins or leaves moves only its own share. The queues' single-active-consumer flag is the
safety net while views differ for a moment: two workers subscribed to one shard never both consume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(worker: str, shard: int) -> bytes:
    return hashlib.blake2b(f"{worker}/{shard}".encode(), digest_size=8).digest()


def owned_shards(me: str, live_workers: Iterable[str], shards: int) -> set[int]:
    workers = sorted(set(live_workers) | {me})
    return {shard for shard in range(shards) if max(workers, key=lambda w: _weight(w, shard)) == me}
