"""Heartbeats and gossip (SPEC §2.5): liveness of each node and its view of its peers.

Each node rewrites ``heartbeat`` every interval (``seq``, wall time, and the version of its haios). Its ``gossip`` file records when
it last heard each peer (the wall time of the newest heartbeat it read from that peer) and its
partition status: PARTITIONED while a majority of its peers has been silent for longer than the
partition window; a partitioned node refuses every phase and WAL append until it hears them again.
Every rewrite stamps ``updated_at``: a gossip file nobody has rewritten for longer than the heartbeat
window (its writer stopped, a simulated partition ended) is stale, and a stale file decides nothing —
not the node's own refusal, not a reconciler's verdict. Its staleness is a finding of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
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


def partition_status(peers: dict[str, str | None], now: float, window: float) -> str:
    """PARTITIONED when more than half of ``peers`` have been silent for longer than ``window``."""
    silent = sum(1 for heard in peers.values() if heard is None or now - parse_utc(heard) > window)
    return "PARTITIONED" if peers and silent * 2 > len(peers) else "NORMAL"


PeerReader = Callable[[str, str], "bytes | None"]
"""``read(peer, relpath)``: a file of a peer's root, None when it has none (a transport's read_file)."""


def update_gossip(
    root: Path, node: str, peers: Iterable[str], read: PeerReader, now: float, window: float
) -> dict[str, Any]:
    """Read every peer's heartbeat with ``read``, record when each was last heard, set the status.

    An unreachable peer or an unreadable heartbeat counts as silence, never as an error.
    """
    path = root / "gossip"
    version = controlfile.current_version(path)
    previous: dict[str, Any] = controlfile.read_mapping(path)[0] if version is not None else {}
    heard: dict[str, str | None] = {}
    for peer in sorted(set(peers) - {node}):
        last = (previous.get("peers") or {}).get(peer)
        try:
            data = read(peer, "heartbeat")
            if data is not None:
                wall = controlfile.load_mapping(controlfile.decode(data, f"{peer}:heartbeat"))["wall_time"]
                if last is None or parse_utc(wall) > parse_utc(last):
                    last = wall
        except (HaiosError, KeyError, ValueError, TypeError):
            pass  # silence, or a heartbeat no haios wrote: either way nothing was heard
        heard[peer] = last
    status = partition_status(heard, now, window)
    since = previous.get("since") if previous.get("partition_status") == status else utc(now)
    body = {
        "node": node,
        "peers": heard,
        "partition_status": status,
        "since": since or utc(now),
        "updated_at": utc(now),
    }
    controlfile.write_mapping(path, body, expected_version=version)
    return body
