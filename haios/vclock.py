"""Vector clocks (SPEC §7): sparse, immutable, with a deterministic total order and tombstones.

A clock maps node names to counters; zero entries are never stored, so ``{}`` is the zero clock.
``compare`` says whether one event happened before another, after it, at the same point, or
concurrently; ``merge`` is the element-wise maximum. Events are totally ordered by
``(lamport, node)``, which extends the causal order because a Lamport index grows along every
causal chain.

Entries of nodes decommissioned longer than the retention are pruned once they are *stable*: every
clock kept has seen the node's final counter, so dropping the entry changes no comparison. What
remains is a :class:`Tombstone` ``(node, last_counter, last_vc_hash)``; re-ingesting an archived log
whose clocks disagree with it raises :class:`ForensicMismatch`.

>>> a = VClock({"n1": 2}); b = a.merge(VClock({"n2": 1})).tick("n2")
>>> a.compare(b), b.compare(a), a.compare(VClock({"n3": 1}))
(<Order.BEFORE: 'before'>, <Order.AFTER: 'after'>, <Order.CONCURRENT: 'concurrent'>)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum
from typing import Any

from .errors import ForensicMismatch


class Order(Enum):
    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


class VClock(Mapping[str, int]):
    """An immutable sparse vector clock."""

    __slots__ = ("_entries", "_hash")

    def __init__(self, entries: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        clean: dict[str, int] = {}
        for node, counter in items:
            if not isinstance(node, str) or not node:
                raise ValueError(f"vector clock node names are non-empty strings (got {node!r})")
            if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
                raise ValueError(f"vector clock counters are non-negative integers (got {counter!r} for {node})")
            if counter:
                clean[node] = counter
        self._entries = dict(sorted(clean.items()))
        self._hash: int | None = None

    # Mapping protocol: missing nodes read as 0 through get(); __getitem__ raises like a dict.
    def __getitem__(self, node: str) -> int:
        return self._entries[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VClock):
            return self._entries == other._entries
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._entries.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"VClock({self._entries!r})"

    def counter(self, node: str) -> int:
        return self._entries.get(node, 0)

    def tick(self, node: str) -> VClock:
        """The clock of the next local event on ``node``."""
        return VClock({**self._entries, node: self.counter(node) + 1})

    def merge(self, other: Mapping[str, int]) -> VClock:
        """Element-wise maximum: the clock of an event that has seen both."""
        merged = dict(self._entries)
        for node, counter in other.items():
            if counter > merged.get(node, 0):
                merged[node] = counter
        return VClock(merged)

    def compare(self, other: Mapping[str, int]) -> Order:
        less = greater = False
        for node in set(self._entries) | set(other):
            mine, theirs = self._entries.get(node, 0), other.get(node, 0)
            if mine < theirs:
                less = True
            elif mine > theirs:
                greater = True
            if less and greater:
                return Order.CONCURRENT
        if less:
            return Order.BEFORE
        if greater:
            return Order.AFTER
        return Order.EQUAL

    def happened_before(self, other: Mapping[str, int]) -> bool:
        return self.compare(other) is Order.BEFORE

    def without(self, nodes: Iterable[str]) -> VClock:
        drop = set(nodes)
        return VClock({n: c for n, c in self._entries.items() if n not in drop})

    def to_json(self) -> dict[str, int]:
        """The sparse JSON encoding (keys sorted, zeros absent)."""
        return dict(self._entries)

    @classmethod
    def from_json(cls, value: Any) -> VClock:
        if not isinstance(value, dict):
            raise ValueError("a vector clock is a JSON object of node: counter")
        return cls(value)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON encoding."""
        text = json.dumps(self._entries, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Event:
    """What the total order needs of an event: its node, Lamport index and vector clock."""

    node: str
    lamport: int
    vc: VClock


def order_key(event: Event) -> tuple[int, str]:
    """The deterministic total order: Lamport index, then node name (SPEC §7)."""
    return (event.lamport, event.node)


def sort_events(events: Iterable[Event]) -> list[Event]:
    """Events in the total order; raises ValueError if their clocks and Lamport indexes disagree.

    A causal predecessor must have a smaller Lamport index; anything else means a corrupt history.
    """
    ordered = sorted(events, key=order_key)
    for i, later in enumerate(ordered):
        for earlier in ordered[i + 1 :]:
            if earlier.vc.happened_before(later.vc):
                raise ValueError(
                    f"event of {earlier.node} at lamport {earlier.lamport} happened before one of {later.node} "
                    f"at lamport {later.lamport}: Lamport indexes contradict the vector clocks"
                )
    return ordered


def describe_clock(vc: Mapping[str, int]) -> str:
    """A clock in a line of text: ``n1:3 n2:1`` (``0`` for the zero clock)."""
    return " ".join(f"{node}:{counter}" for node, counter in sorted(vc.items())) or "0"


def _clock_sum(vc: Mapping[str, int]) -> int:
    return sum(vc.values())


def causal_order(items: Sequence[tuple[str, Mapping[str, int]]]) -> list[int]:
    """The indexes of ``items`` — ``(node, clock)`` pairs, each node's in the order it logged them —
    in a causal order: every item comes after all that happened before it.

    Items that are concurrent come in a deterministic order: the smallest ``(sum of the clock, node,
    index)`` first. The sum grows along every causal chain, so it is a Lamport index, and the
    tie-break is the total order of SPEC §7. Clocks that contradict their nodes' logging order (a
    damaged or forged log) cannot deadlock it: the smallest key left is taken.

    >>> causal_order([("b", {"b": 1}), ("a", {"a": 1}), ("a", {"a": 2, "b": 1})])
    [1, 0, 2]
    """
    clocks = [vc if isinstance(vc, VClock) else VClock(vc) for _, vc in items]
    after: list[set[int]] = [set() for _ in items]  # after[i]: items that must come after i
    blockers = [0] * len(items)
    last_of: dict[str, int] = {}
    for j, (node, _) in enumerate(items):
        earlier = {i for i in range(len(items)) if i != j and clocks[i].happened_before(clocks[j])}
        if node in last_of:
            earlier.add(last_of[node])  # a node's own records are in its log's order
        last_of[node] = j
        for i in earlier:
            if j not in after[i]:
                after[i].add(j)
                blockers[j] += 1

    def key(i: int) -> tuple[int, str, int]:
        return (_clock_sum(clocks[i]), items[i][0], i)

    ready = sorted((i for i in range(len(items)) if not blockers[i]), key=key)
    done: list[int] = []
    left = set(range(len(items)))
    while left:
        i = ready.pop(0) if ready else min(left, key=key)  # a cycle: only forged clocks make one
        if i not in left:
            continue
        left.discard(i)
        done.append(i)
        for j in after[i]:
            blockers[j] -= 1
            if not blockers[j] and j in left:
                ready.append(j)
        ready.sort(key=key)
    return done


# -- retention: tombstones --------------------------------------------------------------------------


@dataclass(frozen=True)
class Tombstone:
    """What is left of a pruned node: its final counter and the hash of its last event's clock."""

    node: str
    last_counter: int
    last_vc_hash: str

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "last_counter": self.last_counter, "last_vc_hash": self.last_vc_hash}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Tombstone:
        return cls(str(value["node"]), int(value["last_counter"]), str(value["last_vc_hash"]))


def tombstone_for(node: str, last_event_vc: VClock) -> Tombstone:
    """The tombstone of ``node``, whose last event carried ``last_event_vc``."""
    return Tombstone(node, last_event_vc.counter(node), last_event_vc.digest())


def stable(node: str, final_counter: int, clocks: Iterable[VClock]) -> bool:
    """Whether every clock has seen ``node``'s final counter, so pruning it changes no comparison."""
    return all(vc.counter(node) == final_counter for vc in clocks)


def prune(clocks: Iterable[VClock], tombstones: Iterable[Tombstone]) -> list[VClock]:
    """The clocks without the entries of tombstoned nodes.

    Refuses (ValueError) when a clock has not seen a pruned node's final counter: dropping the entry
    then could turn "concurrent" into "before" and change the order of retained events.
    """
    kept = list(clocks)
    stones = list(tombstones)
    for stone in stones:
        if not stable(stone.node, stone.last_counter, kept):
            raise ValueError(
                f"node {stone.node} is not stable: some clock has not seen its counter {stone.last_counter}"
            )
    names = [s.node for s in stones]
    return [vc.without(names) for vc in kept]


def check_reingest(tombstone: Tombstone, events: Iterable[Event]) -> None:
    """Check archived events of a pruned node against its tombstone; raise ForensicMismatch if they disagree."""
    own = [e for e in events if e.node == tombstone.node]
    if not own:
        raise ForensicMismatch(
            f"archived log has no event of {tombstone.node}, whose tombstone says counter {tombstone.last_counter}"
        )
    last = max(own, key=lambda e: e.vc.counter(tombstone.node))
    counter = last.vc.counter(tombstone.node)
    if counter != tombstone.last_counter:
        raise ForensicMismatch(
            f"archived log of {tombstone.node} ends at counter {counter}, its tombstone at {tombstone.last_counter}"
        )
    if last.vc.digest() != tombstone.last_vc_hash:
        raise ForensicMismatch(
            f"the clock of {tombstone.node}'s last archived event (counter {counter}) does not match its tombstone's hash"
        )


def due_for_pruning(members: Mapping[str, tuple[str, date | None]], today: date, retention_days: float) -> list[str]:
    """Nodes decommissioned for longer than the retention, whose entries may be pruned (SPEC §7)."""
    return sorted(
        node
        for node, (status, since) in members.items()
        if status == "decommissioned" and since is not None and (today - since).days > retention_days
    )
