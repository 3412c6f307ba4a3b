"""How the workers divide the shards (services/worker/ownership.py): evenly, every shard owned
once, the same answer from every worker's view, and little movement when one joins or leaves;
shards lent for a backlog only by their owner, to a live worker, as few messages as cover it,
exchanged for some of the taker's when that makes it exact."""

from __future__ import annotations

import pytest

from services.worker.ownership import Move, assignment, even_assignment, need, owned_shards, room, swap
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


def lend(waiting: dict[int, int], wanted: int, room: int) -> set[int]:
    """A one-sided lend: an exchange with nothing to take."""
    given, taken = swap(waiting, {}, wanted, room)
    assert taken == set()
    return given


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
    # An exact one-sided lend is preferred to any exchange (it moves the fewest messages).
    assert swap(waiting, {7: 1, 8: 2}, wanted, peer_room) == (chosen, set())


def moved(mine: dict[int, int], theirs: dict[int, int], chosen: tuple[set[int], set[int]]) -> int:
    given, taken = chosen
    assert given <= set(mine) and taken <= set(theirs)
    return sum(mine[s] for s in given) - sum(theirs[s] for s in taken)


@pytest.mark.parametrize(
    ("mine", "theirs", "wanted"),
    [
        # A burst of 160 over 2 x 40 slots: 50 and 30 waiting, the excess 10 is the taker's room too.
        # No set of the lender's shards makes 10; giving 13 and taking 3 back does.
        ({1: 6, 2: 7, 3: 13, 4: 12, 5: 12}, {9: 3, 10: 9, 11: 9, 12: 9}, 10),
        # A small excess, smaller than any shard's backlog: a shard of 6 for one of 5.
        ({1: 6, 2: 7, 3: 8}, {9: 5, 10: 9}, 1),
        ({1: 6, 2: 7, 3: 8}, {9: 4, 10: 9}, 3),
        # Several of each side.
        ({1: 9, 2: 9, 3: 9}, {9: 4, 10: 4, 11: 20}, 10),
    ],
)
def test_an_exchange_makes_exact_what_a_one_sided_lend_cannot(
    mine: dict[int, int], theirs: dict[int, int], wanted: int
) -> None:
    peer_room = wanted  # the exact case: both next rounds full
    one_sided = lend(mine, wanted, peer_room)
    assert moved(mine, {}, (one_sided, set())) != wanted
    chosen = swap(mine, theirs, wanted, peer_room)
    assert moved(mine, theirs, chosen) == wanted
    assert chosen[1], "an exact one-sided lend would have been taken"
    assert swap(mine, theirs, wanted, peer_room) == chosen  # deterministic


def test_an_exchange_prefers_the_fewest_messages_moved_and_stays_within_the_room() -> None:
    mine, theirs = {1: 6, 2: 20}, {9: 5, 10: 19}
    # 6 for 5 and 20 for 19 both make 1: the first moves fewer messages.
    assert swap(mine, theirs, 1, 1) == ({1}, {9})
    # Nothing exact, not even by an exchange: the smallest difference that covers it within the room...
    assert moved({1: 9}, {9: 4}, swap({1: 9}, {9: 4}, 3, 6)) == 5
    # ...else the largest that fits, which may need an exchange when every shard alone is too big.
    assert swap({1: 9}, {9: 4}, 8, 6) == ({1}, {9})
    assert swap({1: 9}, {9: 2}, 8, 6) == (set(), set())
    assert swap({1: 9}, {9: 4}, 0, 6) == (set(), set()) and swap({1: 9}, {9: 4}, 3, 0) == (set(), set())
