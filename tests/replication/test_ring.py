"""Replica placement (SPEC §6.1): the consistent-hash ring's determinism, balance and bounded
movement, and the sticky, rate-limited migration after a membership change (property tests)."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from haios.replication.ring import MAX_MOVE_FRACTION, STICKY_WINDOW, Placement, Ring, advance

names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True), min_size=1, max_size=40, unique=True)


@given(names, st.integers(min_value=1, max_value=5), st.randoms(use_true_random=False))
def test_ring_groups_are_deterministic_distinct_and_exclude_the_origin(
    members: list[str], replicas: int, rnd: object
) -> None:
    shuffled = list(members)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = Ring(members), Ring(shuffled)
    for origin in members:
        peers = a.peers(origin, replicas)
        assert peers == b.peers(origin, replicas)  # the same set of members, in any order: the same groups
        assert origin not in peers and len(set(peers)) == len(peers) == min(replicas - 1, len(members) - 1)
        assert a.group(origin, replicas) == (origin, *peers)


@given(names, st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True), st.integers(min_value=2, max_value=5))
def test_a_joining_member_only_takes_slots_and_a_leaving_one_only_gives_its_own(
    members: list[str], newcomer: str, replicas: int
) -> None:
    if newcomer in members:
        return
    before, after = Ring(members), Ring([*members, newcomer])
    for origin in members:
        old, new = set(before.peers(origin, replicas)), set(after.peers(origin, replicas))
        assert new - old <= {newcomer}  # nobody but the newcomer gains a stream
        assert len(old - new) <= 1  # and it displaces at most one peer of it
    for origin in [*members, newcomer]:  # the reverse: the newcomer leaves again
        if origin == newcomer:
            continue
        assert set(after.peers(origin, replicas)) - {newcomer} <= set(before.peers(origin, replicas))


@settings(max_examples=30)
@given(st.integers(min_value=3, max_value=60), st.integers(min_value=2, max_value=4))
def test_ring_spreads_ownership_and_load(n: int, replicas: int) -> None:
    members = [f"node-{i}" for i in range(n)]
    ring = Ring(members)
    span = 2**64
    owned: Counter[str] = Counter()
    hashes = ring._hashes
    for i, owner in enumerate(ring._owners):  # each point owns the arc up to it from the one before
        owned[owner] += (hashes[i] - hashes[i - 1]) % span
    shares = [owned[m] / span * n for m in members]  # 1.0 is a perfect share
    assert min(shares) > 0.5 and max(shares) < 1.6  # virtual nodes keep every share near 1/n
    load = Counter(p for m in members for p in ring.peers(m, replicas))
    assert max(load.values()) <= 3 * (replicas - 1) + 2  # no member carries many times its share of streams


@settings(max_examples=40)
@given(st.integers(min_value=4, max_value=30), st.integers(min_value=1, max_value=4), st.integers(2, 3))
def test_migration_waits_out_the_window_then_moves_a_quarter_per_window(n: int, joining: int, replicas: int) -> None:
    members = [f"node-{i}" for i in range(n)]
    placement, moved = advance(Placement(), members, replicas, 0.0)
    assert sorted(moved) == sorted(members) and placement.streams == {
        m: Ring(members).peers(m, replicas) for m in members
    }
    placement.changed_at = -10 * STICKY_WINDOW  # long settled
    grown = [*members, *[f"new-{i}" for i in range(joining)]]
    now = 1000.0
    placement, moved = advance(placement, grown, replicas, now)
    assert sorted(moved) == [f"new-{i}" for i in range(joining)]  # newcomers' own streams start at once
    target = {m: Ring(grown).peers(m, replicas) for m in grown}
    before = dict(placement.streams)
    placement, moved = advance(placement, grown, replicas, now + STICKY_WINDOW / 2)
    assert moved == [] and placement.streams == before  # the sticky window
    budget = max(1, math.floor(MAX_MOVE_FRACTION * len(grown)))
    t = now + STICKY_WINDOW
    for _ in range(len(grown) + 2):  # bounded: each window moves at least one stream
        placement, moved = advance(placement, grown, replicas, t)
        assert len(moved) <= budget
        assert all(placement.streams[o] == target[o] for o in moved)
        if placement.streams == target:
            break
        t += STICKY_WINDOW
        again, idle = advance(placement, grown, replicas, t - 1)  # within a window: nothing more
        assert idle == [] and again.streams == placement.streams
    assert placement.streams == target


def test_placement_round_trips_and_drops_departed_members() -> None:
    members = ["a", "b", "c", "d", "e"]
    placement, _ = advance(Placement(), members, 3, 0.0)
    assert Placement.from_dict(placement.as_dict()) == placement
    smaller, moved = advance(placement, ["a", "b", "c", "d"], 3, 10.0)
    assert "e" not in smaller.streams and moved == [] and smaller.changed_at == 10.0
