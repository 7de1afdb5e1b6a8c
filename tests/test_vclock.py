"""Vector clocks: algebra, order, JSON, retention with tombstones, forensic checks."""

from __future__ import annotations

import random
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haios.errors import ForensicMismatch
from haios.vclock import (
    Event,
    Order,
    VClock,
    check_reingest,
    due_for_pruning,
    order_key,
    prune,
    sort_events,
    tombstone_for,
)

NODES = ["n1", "n2", "n3", "n4"]
clocks = st.dictionaries(st.sampled_from(NODES), st.integers(min_value=0, max_value=6), max_size=4).map(VClock)


def test_vclock_sparse_zero_entries_are_not_stored() -> None:
    vc = VClock({"n1": 0, "n2": 3})
    assert vc.to_json() == {"n2": 3} and vc.counter("n1") == 0 and VClock() == VClock({"x": 0})


def test_vclock_rejects_bad_entries() -> None:
    for bad in ({"n1": -1}, {"n1": 1.5}, {"": 1}, {"n1": True}):
        with pytest.raises(ValueError):
            VClock(bad)  # type: ignore[arg-type]


def test_vclock_compare_cases() -> None:
    a = VClock({"n1": 1})
    assert a.compare(a.tick("n1")) is Order.BEFORE
    assert a.tick("n1").compare(a) is Order.AFTER
    assert a.compare(VClock({"n1": 1})) is Order.EQUAL
    assert a.compare(VClock({"n2": 1})) is Order.CONCURRENT
    assert VClock().compare(a) is Order.BEFORE


@given(clocks, clocks)
def test_property_merge_commutative(a: VClock, b: VClock) -> None:
    assert a.merge(b) == b.merge(a)


@given(clocks, clocks, clocks)
def test_property_merge_associative(a: VClock, b: VClock, c: VClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(clocks)
def test_property_merge_idempotent(a: VClock) -> None:
    assert a.merge(a) == a


@given(clocks, clocks)
def test_property_compare_consistent_with_merge(a: VClock, b: VClock) -> None:
    m = a.merge(b)
    assert a.compare(m) in (Order.BEFORE, Order.EQUAL) and b.compare(m) in (Order.BEFORE, Order.EQUAL)
    # a <= b exactly when merging b into a changes nothing of b
    assert (a.compare(b) in (Order.BEFORE, Order.EQUAL)) == (m == b)
    flipped = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    assert b.compare(a) is flipped.get(a.compare(b), a.compare(b))


@given(clocks)
def test_property_json_roundtrip(a: VClock) -> None:
    assert VClock.from_json(a.to_json()) == a and list(a.to_json()) == sorted(a.to_json())


def _history(seed: int, steps: int = 60, retire: str | None = None, retire_at: int = 30) -> list[Event]:
    """A random run: local events and message receipts (merges) between NODES, with Lamport indexes."""
    rng = random.Random(seed)
    vcs = {n: VClock() for n in NODES}
    lamports = dict.fromkeys(NODES, 0)
    sent: list[tuple[VClock, int]] = []
    events: list[Event] = []
    for step in range(steps):
        alive = [n for n in NODES if not (retire and n == retire and step >= retire_at)]
        node = rng.choice(alive)
        if sent and rng.random() < 0.5:
            vc, lam = rng.choice(sent)
            vcs[node] = vcs[node].merge(vc)
            lamports[node] = max(lamports[node], lam)
        vcs[node] = vcs[node].tick(node)
        lamports[node] += 1
        events.append(Event(node, lamports[node], vcs[node]))
        sent.append((vcs[node], lamports[node]))
        if retire and step == retire_at:  # everyone hears the retired node's final clock: it becomes stable
            final = vcs[retire]
            for n in alive:
                vcs[n] = vcs[n].merge(final)
            sent = [(v.merge(final), lam) for v, lam in sent]
    return events


@given(st.integers(min_value=0, max_value=10_000))
def test_property_total_order_extends_causality(seed: int) -> None:
    events = _history(seed)
    ordered = sort_events(list(reversed(events)))
    position = {id(e): i for i, e in enumerate(ordered)}
    for a in events:
        for b in events:
            if a.vc.happened_before(b.vc):
                assert position[id(a)] < position[id(b)]
    assert ordered == sorted(events, key=order_key)


def test_vclock_sort_rejects_contradicting_lamports() -> None:
    a = Event("n1", 5, VClock({"n1": 1}))
    b = Event("n2", 3, VClock({"n1": 1, "n2": 1}))  # after a causally, but a smaller Lamport index
    with pytest.raises(ValueError, match="contradict"):
        sort_events([a, b])


@given(st.integers(min_value=0, max_value=10_000))
def test_property_gc_never_changes_the_order_of_retained_events(seed: int) -> None:
    events = _history(seed, steps=80, retire="n4", retire_at=30)
    final = max((e.vc for e in events if e.node == "n4"), key=lambda v: v.counter("n4"))
    stone = tombstone_for("n4", final)
    retained = [e for e in events[31:] if e.node != "n4"]  # events after the node became stable
    pruned = prune([e.vc for e in retained], [stone])
    for i, a in enumerate(retained):
        for j, b in enumerate(retained):
            assert pruned[i].compare(pruned[j]) is a.vc.compare(b.vc)
    assert all("n4" not in vc for vc in pruned)


def test_vclock_prune_refuses_unstable_node() -> None:
    stone = tombstone_for("n4", VClock({"n4": 3}))
    with pytest.raises(ValueError, match="not stable"):
        prune([VClock({"n1": 1, "n4": 3}), VClock({"n1": 2, "n4": 2})], [stone])


def test_vclock_reingest_matches_tombstone() -> None:
    events = _history(11, steps=40, retire="n2", retire_at=20)
    own = [e for e in events if e.node == "n2"]
    stone = tombstone_for("n2", own[-1].vc)
    check_reingest(stone, events)  # the same archive: fine
    tampered = [e for e in events if e is not own[-1]] + [
        Event("n2", own[-1].lamport, own[-1].vc.merge(VClock({"n9": 1})))
    ]
    with pytest.raises(ForensicMismatch, match="does not match its tombstone's hash") as info:
        check_reingest(stone, tampered)
    assert info.value.exit_code == 5
    with pytest.raises(ForensicMismatch, match="ends at counter"):
        check_reingest(stone, [e for e in events if e is not own[-1]])
    with pytest.raises(ForensicMismatch, match="no event of n2"):
        check_reingest(stone, [e for e in events if e.node != "n2"])
    assert stone == type(stone).from_json(stone.to_json())


def test_vclock_due_for_pruning_uses_retention() -> None:
    members = {
        "n1": ("active", None),
        "n2": ("decommissioned", date(2026, 1, 1)),
        "n3": ("decommissioned", date(2026, 10, 1)),
        "n4": ("draining", date(2025, 1, 1)),
    }
    assert due_for_pruning(members, date(2026, 11, 26), 90) == ["n2"]
