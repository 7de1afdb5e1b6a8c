"""The node root (SPEC §2.1): the directory a node keeps its state in.

Every name is fixed relative to the root. A fresh root holds the four directories, ``state.txt``
(nothing committed yet: ``g: 0``, ``ph: null``), an empty ``fence`` and the ``policy`` reconcile
would push.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import controlfile
from ..fsutil import makedirs_durable

LAYOUT_DIRS = ("data", "wal", "snapshots", "replicas")
CONTROL_FILES = {
    "state.txt": "control-state",
    "policy": "control-policy",
    "fence": "control-fence",
    "heartbeat": "control-heartbeat",
    "gossip": "control-gossip",
    "replication": "control-replication",
}
"""Control files with a fixed name and the schema their body follows (``exec_status_<g>.txt``: control-exec-status)."""


def initial_state(node: str) -> dict[str, Any]:
    """``state.txt`` of a node that has committed nothing yet."""
    return {"node": node, "g": 0, "ph": None, "status": "READY"}


def init_node_root(root: Path, node: str, policy: dict[str, Any]) -> bool:
    """Create the node root at ``root`` for ``node``; return False (and touch nothing) if one exists.

    An existing ``state.txt`` means the node has state that must never be overwritten.
    """
    if (root / "state.txt").exists():
        return False
    makedirs_durable(root)
    for name in LAYOUT_DIRS:
        makedirs_durable(root / name)
    if controlfile.current_version(root / "policy") is None:
        controlfile.write_mapping(root / "policy", policy, expected_version=None)
    if controlfile.current_version(root / "fence") is None:
        controlfile.write_mapping(root / "fence", {"shards": {}}, expected_version=None)
    # state.txt last: its presence marks the root as complete.
    controlfile.write_mapping(root / "state.txt", initial_state(node), expected_version=None)
    return True
