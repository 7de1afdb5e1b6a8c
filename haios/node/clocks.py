"""The node's side of vector-clock GC (SPEC §7): what a reconciler reads of a clock, and how it makes
a live member see a decommissioned node's last event before that node's entry is pruned.

``clock`` (read only) answers the clock of the last record of the node's WAL, or of the replica it
holds of another node's WAL (``origin``): the final clock of a decommissioned node, read from the
node itself or, when it is gone, from a peer that kept a copy of its log.

``see`` (fenced on the policy shard) merges such a final clock into the node's own: it appends an
EVENT ``vclock.merged`` whose clock has seen it. Nothing is written when the node has seen that
counter already, or no longer carries the entry (it was pruned).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.model import NAME_RE
from ..errors import UsageError, WalCorruptError
from ..vclock import VClock
from ..wal import RecordType, read_records
from .fence import POLICY_SHARD, check_fence
from .transaction import Node

MERGED_EVENT = "vclock.merged"
REPLICAS = "replicas"  # where a node keeps its peers' WAL copies (haios.replication writes them)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise UsageError(f"{what} {str(value)[:64]!r} is not a node name")
    return value


def clock(root: Path, *, origin: str | None = None) -> dict[str, Any]:
    """The clock and Lamport index of the last record of this node's WAL, or (``origin``) of the copy
    of ``origin``'s WAL this node holds; ``vc`` None when there is none. A torn tail ends the read
    at the last whole record; other damage raises."""
    name = Node(root).name
    directory = root / "wal" if origin is None else root / REPLICAS / _name(origin, "origin")
    last = None
    if directory.is_dir():
        try:
            for record in read_records(directory):
                last = record
        except WalCorruptError as exc:
            if not exc.corruption.torn_tail:
                raise
    vc = last.payload.get("vc") if last is not None else None
    return {
        "node": name,
        "of": origin or name,
        "vc": VClock.from_json(vc).to_json() if isinstance(vc, dict) else None,
        "lamport": last.lamport if last is not None else None,
    }


def see(root: Path, *, of: str, vc: Any, token: int) -> dict[str, Any]:
    """Make this node's clock see ``of``'s counter in ``vc`` (its final clock): one EVENT record
    when it has not seen it yet. Answers the counter of ``of`` the node's clock holds now."""
    of = _name(of, "node")
    try:
        final = VClock.from_json(vc)
    except ValueError as exc:
        raise UsageError(f"'see' takes a vector clock: {exc}") from None
    check_fence(root, POLICY_SHARD, token)  # SPEC §2.5: a stale reconciler never writes
    node = Node(root)
    if of in node.pruned():
        return {"node": node.name, "of": of, "outcome": "pruned", "counter": final.counter(of)}
    mine = node._vclock()
    if mine.counter(of) >= final.counter(of):
        return {"node": node.name, "of": of, "outcome": "already seen", "counter": mine.counter(of)}
    state, _ = node.state()
    g, phase = int(state.get("g") or 0), str(state.get("ph") or "IDLE")
    fields = {"name": MERGED_EVENT, "of": of, "counter": final.counter(of)}
    node.append(g, phase, f"vclock-{of}", RecordType.EVENT, fields, seen=final)
    return {"node": node.name, "of": of, "outcome": "merged", "counter": final.counter(of)}
