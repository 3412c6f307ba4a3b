"""How the workers divide the shards (services/worker/ownership.py): evenly, every shard owned
once, the same answer from every worker's view, and little movement when one joins or leaves;
shards lent for a backlog only by their owner, to a live worker, as few messages as cover it."""

from __future__ import annotations

import pytest

from services.worker.ownership import Move, assignment, even_assignment, lend, need, owned_shards, room
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


def test_a_shard_lent_by_its_owner_to_a_live_worker_moves_and_no_other_does() -> None:
    workers = ["a", "b"]
    owners = even_assignment(workers, DEFAULT_SHARDS)
    a_shard = min(s for s, owner in owners.items() if owner == "a")
    b_shard = min(s for s, owner in owners.items() if owner == "b")
    moves = {
        a_shard: Move(giver="a", taker="b", at=0.0, waiting=5),
        b_shard: Move(giver="a", taker="b", at=0.0),  # not a's to lend: ignored
    }
    lent = assignment(workers, DEFAULT_SHARDS, moves)
    assert lent == {**owners, a_shard: "b"}
    assert owned_shards("a", ["b"], DEFAULT_SHARDS, moves) == {s for s, o in owners.items() if o == "a"} - {a_shard}
    # The taker gone: the shard is its owner's again; with no moves, the even split.
    assert assignment(["a"], DEFAULT_SHARDS, moves) == even_assignment(["a"], DEFAULT_SHARDS)
    assert assignment(workers, DEFAULT_SHARDS, {}) == owners
    assert Move.from_json(moves[a_shard].to_json()) == moves[a_shard]
    assert Move.from_json(b"{not json") is None


def test_what_is_lent_covers_the_backlog_beyond_one_round_with_the_fewest_messages() -> None:
    # 54 waiting for 40 slots, the peer has room for 14: shards whose backlogs make exactly 14.
    waiting = {1: 8, 2: 10, 3: 6, 4: 12, 5: 11, 6: 7}
    wanted, peer_room = need(54, 40), room(40, 26)
    assert (wanted, peer_room) == (14, 14)
    chosen = lend(waiting, wanted, peer_room)
    assert sum(waiting[s] for s in chosen) == 14
    assert lend(waiting, wanted, peer_room) == chosen  # deterministic
    # No set fits exactly: the smallest that covers it within the room, else as much as fits.
    assert lend({1: 9, 2: 9}, 5, 10) == {1}
    assert lend({1: 9, 2: 9, 3: 4}, 15, 14) == {1, 3}
    # Nothing to lend within one round, or no room at the peer.
    assert need(40, 40) == 0 and lend(waiting, 0, 14) == set() and lend(waiting, 5, 0) == set()
    assert room(40, 30, incoming=12) == 0
