"""How the workers divide the shards (services/worker/ownership.py): evenly, every shard owned
once, the same answer from every worker's view, and little movement when one joins or leaves."""

from __future__ import annotations

import pytest

from services.worker.ownership import assignment, owned_shards
from shared.settings import DEFAULT_SHARDS


def shares(workers: list[str], shards: int) -> dict[str, int]:
    owners = assignment(workers, shards)
    return {worker: sum(1 for owner in owners.values() if owner == worker) for worker in workers}


@pytest.mark.parametrize("count", range(1, 13))
@pytest.mark.parametrize("shards", [1, 4, 16, DEFAULT_SHARDS, 100])
def test_every_shard_has_one_owner_and_shares_differ_by_at_most_one(count: int, shards: int) -> None:
    workers = [f"worker-{shards}-{i}" for i in range(count)]
    assert sorted(assignment(workers, shards)) == list(range(shards))
    owned = shares(workers, shards).values()
    assert max(owned) == -(-shards // count) and min(owned) == shards // count


@pytest.mark.parametrize("count", [2, 4, 8])
def test_the_default_shard_count_splits_exactly_over_2_4_and_8_workers(count: int) -> None:
    workers = [f"pod-{i}" for i in range(count)]
    assert set(shares(workers, DEFAULT_SHARDS).values()) == {DEFAULT_SHARDS // count}


def test_each_worker_computes_the_same_division_from_its_own_view() -> None:
    workers = ["b", "a", "c"]
    mine = [owned_shards(me, reversed(workers), DEFAULT_SHARDS) for me in workers]
    assert set().union(*mine) == set(range(DEFAULT_SHARDS))
    assert sum(len(shards) for shards in mine) == DEFAULT_SHARDS
    # A worker not yet in the heartbeats counts itself in.
    assert owned_shards("a", ["b", "c"], DEFAULT_SHARDS) == mine[1]


@pytest.mark.parametrize("count", range(1, 9))
def test_a_join_or_a_leave_moves_little_more_than_it_must(count: int) -> None:
    before = [f"w{i}" for i in range(count)]
    after = [*before, "newcomer"]
    old, new = assignment(before, DEFAULT_SHARDS), assignment(after, DEFAULT_SHARDS)
    moved = sum(1 for shard in range(DEFAULT_SHARDS) if old[shard] != new[shard])
    must = sum(1 for owner in new.values() if owner == "newcomer")
    # The newcomer's share must move; a few more shift to keep the shares even, never most of them.
    assert must <= moved <= 2 * must + 1
