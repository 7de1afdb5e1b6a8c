"""Replica placement (SPEC §6.1): a consistent-hash ring over the current membership, and the slow,
bounded migration of replica streams after the membership changes.

Every member has ``vnodes`` points on a 64-bit ring (SHA-256 of ``name#i``). A node's WAL stream is
placed at the point of its own name; its replica peers are the first ``R - 1`` distinct other members
met clockwise from there. The ring depends on the set of members only (not their order), so every
reconciler and node computes the same groups; and a member joining or leaving moves only the streams
whose peers it takes or gave up — no other stream changes.

After a membership change the placement stays put for a sticky window (5 min), so that a flapping
member does not make streams migrate back and forth; then at most a quarter of the streams move per
window until the placement matches the ring.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

VNODES = 64
STICKY_WINDOW = 300.0  # seconds the placement stays put after a membership change
MAX_MOVE_FRACTION = 0.25  # of the streams, per window


def _point(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big")


class Ring:
    """The consistent-hash ring over a set of members."""

    def __init__(self, members: Iterable[str], *, vnodes: int = VNODES) -> None:
        self.members = tuple(sorted(set(members)))
        points = sorted((_point(f"{m}#{i}"), m) for m in self.members for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def peers(self, origin: str, replicas: int) -> tuple[str, ...]:
        """The ``replicas - 1`` members (fewer if the ring is small) that keep copies of ``origin``'s
        WAL, in ring order from the origin's point; the origin itself is never one of them."""
        wanted = min(replicas - 1, len([m for m in self.members if m != origin]))
        found: list[str] = []
        if wanted <= 0:
            return ()
        start = bisect.bisect_right(self._hashes, _point(origin))
        for i in range(len(self._owners)):
            member = self._owners[(start + i) % len(self._owners)]
            if member != origin and member not in found:
                found.append(member)
                if len(found) == wanted:
                    break
        return tuple(found)

    def group(self, origin: str, replicas: int) -> tuple[str, ...]:
        """The origin and its peers: the replica group whose majority acknowledges a durable record."""
        return (origin, *self.peers(origin, replicas))


@dataclass
class Placement:
    """Which peers hold each node's WAL stream now, and when the membership last changed."""

    streams: dict[str, tuple[str, ...]] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    changed_at: float = 0.0  # when the membership was last seen to change
    moved_at: float | None = None  # when streams last migrated

    def as_dict(self) -> dict[str, object]:
        return {
            "streams": {k: list(v) for k, v in sorted(self.streams.items())},
            "members": list(self.members),
            "changed_at": self.changed_at,
            "moved_at": self.moved_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Placement:
        streams = data.get("streams") or {}
        assert isinstance(streams, Mapping)
        members = data.get("members") or []
        assert isinstance(members, list)
        moved = data.get("moved_at")
        return cls(
            {str(k): tuple(v) for k, v in streams.items()},
            tuple(str(m) for m in members),
            float(data.get("changed_at") or 0.0),  # type: ignore[arg-type]
            None if moved is None else float(moved),  # type: ignore[arg-type]
        )


def advance(
    placement: Placement,
    members: Iterable[str],
    replicas: int,
    now: float,
    *,
    window: float = STICKY_WINDOW,
    fraction: float = MAX_MOVE_FRACTION,
) -> tuple[Placement, list[str]]:
    """Carry the placement forward to ``now`` for the current ``members``; returns it and the origins
    whose streams moved. A new member's stream is placed at once (it has nothing to move); a departed
    member's stream is dropped; every other change waits out the sticky window after the last
    membership change and then moves at most ``fraction`` of the streams per window."""
    current = tuple(sorted(set(members)))
    ring = Ring(current)
    changed_at = placement.changed_at if current == placement.members else now
    streams = {o: p for o, p in placement.streams.items() if o in current}
    moved: list[str] = []
    for origin in current:
        if origin not in streams:
            streams[origin] = ring.peers(origin, replicas)
            moved.append(origin)
    result = Placement(streams, current, changed_at, placement.moved_at)
    pending = [o for o in current if streams[o] != ring.peers(o, replicas)]
    if not pending or now - changed_at < window:
        return result, moved
    if placement.moved_at is not None and now - placement.moved_at < window:
        return result, moved
    budget = max(1, math.floor(fraction * len(current)))
    for origin in sorted(pending, key=lambda o: (_point(f"move:{o}"), o))[:budget]:
        streams[origin] = ring.peers(origin, replicas)
        moved.append(origin)
    result.moved_at = now
    return result, moved
