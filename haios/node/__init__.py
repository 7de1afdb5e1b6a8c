"""The participant side: node roots, phase transactions, snapshots, heartbeat, gossip and fence."""

from ..wal.phases import PhaseLog
from .fence import check_fence
from .paths import confine
from .root import CONTROL_FILES, LAYOUT_DIRS, init_node_root
from .transaction import Node, PhaseTx, apply_intents, intents_digest, next_transition, scan_phases

__all__ = [
    "CONTROL_FILES",
    "LAYOUT_DIRS",
    "Node",
    "PhaseLog",
    "PhaseTx",
    "apply_intents",
    "check_fence",
    "confine",
    "init_node_root",
    "intents_digest",
    "next_transition",
    "scan_phases",
]
