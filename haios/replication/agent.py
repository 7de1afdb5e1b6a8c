"""The node-side requests of ``haios node recover`` that replication answers (SPEC §6.1):
``restore_wal`` (rebuild a lost or corrupt WAL from the replicas) and ``replication`` (the replica
group as it stands, and the settings, placement or permission reconcile sends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..node.transaction import Node
from .origin import Replicator, Settings, quorum, read_state
from .restore import restore_wal as restore


def restore_wal(root: Path) -> dict[str, Any]:
    """Rebuild the node's WAL from its replica peers when it is missing or corrupt (SPEC §6.1)."""
    return restore(root).as_dict()


def replication(
    root: Path,
    permit_async: str | None = None,
    group: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The node's replica group as it stands (``replication`` control file, else the ring's choice).
    With ``settings``, take the replication settings reconcile sends (turning it on or off); with
    ``group`` (the origin first), the placement reconcile decided; with ``permit_async``, let that
    peer acknowledge before its fsync for a while (SPEC §6.1)."""
    node = Node(root)
    told = None  # settings that differ from what the node keeps: written with the placement, once
    if settings is not None:
        if not isinstance(settings, dict) or settings.get("mode") not in ("off", "sync-majority"):
            raise UsageError(f"replication settings for {node.name} must say mode off or sync-majority: {settings}")
        if read_state(root)[0].get("settings") != settings:
            told = settings
    current = Settings.for_node(root, node.policy, told)
    replicator = Replicator(node.name, root, current, links={})
    if current.on and group is not None:
        if not group or group[0] != node.name or len(set(group)) != len(group):
            raise UsageError(f"a replica group for {node.name} must start with it and name each peer once: {group}")
        if list(group[1:]) != replicator.peers() or read_state(root)[0].get("group") is None:
            replicator.place(list(group[1:]), settings=told)
            told = None  # written with the placement
    if told is not None:
        replicator.configure(told)
    if not current.on:
        return {"node": node.name, "mode": current.mode}
    if permit_async is not None:
        if permit_async not in replicator.peers():
            raise UsageError(f"{permit_async} is not a replica peer of {node.name} ({', '.join(replicator.peers())})")
        replicator.permit_async(permit_async)
    body, _ = read_state(root)
    peers = replicator.peers()
    return {
        "node": node.name,
        "mode": current.mode,
        "group": [node.name, *peers],
        "quorum": quorum(1 + len(peers)),
        "lagging": body.get("lagging") or {},
        "permit_async": body.get("permit_async"),
        "epoch": body.get("epoch", 0),
        "history": (body.get("history") or [])[-5:],
    }


OPERATIONS = {"restore_wal": restore_wal, "replication": replication}
