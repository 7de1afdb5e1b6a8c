"""Heartbeats (SPEC §2.5): each node's agent rewrites ``heartbeat`` every interval (``seq``, wall time,
and the version of its haios), and what its ``gossip`` file says of the node's partition status.

How the gossip file is kept is :mod:`haios.node.gossip`. A partitioned node refuses every phase and
WAL append until it hears a majority again. Its agent stamps ``updated_at`` every round: a gossip file
nobody has rewritten for longer than the heartbeat window (its agent stopped, a simulated partition
ended) is stale, and a stale file decides nothing — not the node's own refusal, not a reconciler's
verdict. Its staleness is a finding of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__, controlfile
from ..errors import HaiosError, VersionConflict
from ..timefmt import parse_utc, utc


def gossip_age(gossip: Mapping[str, Any] | None, now: float) -> float | None:
    """Seconds since ``gossip`` was last rewritten (``updated_at``; a file from before it was stamped:
    ``since``); None when it names no time that can be read."""
    if not gossip:
        return None
    stamp = gossip.get("updated_at", gossip.get("since"))
    try:
        return now - parse_utc(stamp) if isinstance(stamp, str) else None
    except ValueError:
        return None


def gossip_partitioned(gossip: Mapping[str, Any] | None, now: float, max_age: float) -> bool:
    """True when ``gossip`` says PARTITIONED and was rewritten within ``max_age`` seconds: a stale
    file is no verdict (its writer is not keeping it current)."""
    if not gossip or gossip.get("partition_status") != "PARTITIONED":
        return False
    age = gossip_age(gossip, now)
    return age is not None and age <= max_age


def beat(root: Path, node: str, now: float | None = None) -> dict[str, Any]:
    """Write the next heartbeat of ``node``; returns it."""
    ts = time.time() if now is None else now
    path = root / "heartbeat"
    for _ in range(10):
        version = controlfile.current_version(path)
        seq = 0 if version is None else int(controlfile.read_mapping(path)[0]["seq"])
        body = {"node": node, "seq": seq + 1, "wall_time": utc(ts), "haios_version": __version__}
        try:
            controlfile.write_mapping(path, body, expected_version=version)
            return body
        except VersionConflict:
            continue
    raise HaiosError(f"{root}: could not write the heartbeat (another writer keeps changing it)")
