"""The node's WAL replication (SPEC §6.1), plugged in from the floor above.

:mod:`haios.replication` implements it and installs itself when it is imported; every program that
runs nodes imports it (the node command line, the use cases of :mod:`haios.ops`, the simulator's
local cluster). A node whose settings turn replication on while nothing is installed refuses to
write — it never writes a WAL record its replicas would not get.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import controlfile
from ..errors import HaiosError
from ..wal.writer import Replicator

REPLICATION_FILE = "replication"  # the node's replication control file (what reconcile last told it)


@dataclass(frozen=True)
class Replication:
    """What a node needs of its replication."""

    # (node, root, policy, clock) -> the replicator its settings ask for, None when replication is off
    replicator_for: Callable[[str, Path, dict[str, Any], Callable[[], float]], Replicator | None]
    # (root, links) -> restore the WAL from a replica longer than the local one (a torn tail)
    heal: Callable[[Path, Any], Any]
    # node-side requests of ``node recover`` that replication answers (restore_wal, replication)
    operations: Mapping[str, Callable[..., dict[str, Any]]]


_installed: list[Replication] = []


def install(replication: Replication) -> None:
    """Plug replication in (:mod:`haios.replication` does, once, when it is imported)."""
    _installed[:] = [replication]


def installed(root: Path, policy: dict[str, Any]) -> Replication | None:
    """The installed replication; None when there is none and the node does not replicate. A node
    whose policy or control file turns replication on without one installed is refused."""
    if _installed:
        return _installed[0]
    mode = str((policy.get("replication") or {}).get("mode", "off"))
    if (root / REPLICATION_FILE).exists():
        told = controlfile.read_mapping(root / REPLICATION_FILE)[0].get("settings") or {}
        mode = str(told.get("mode", mode)) if isinstance(told, dict) else mode
    if mode != "off":
        raise HaiosError(
            f"{root}: the node replicates its WAL, but this program has no replication loaded",
            hint="this is a bug in the program that opened the node: it must import haios.replication",
        )
    return None


def operations() -> Mapping[str, Callable[..., dict[str, Any]]]:
    """The node-side requests replication answers (none while it is not installed)."""
    return _installed[0].operations if _installed else {}
