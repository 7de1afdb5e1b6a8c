"""The participant side: node roots, phase transactions, snapshots, heartbeat, gossip and fence."""

from .root import CONTROL_FILES, LAYOUT_DIRS, init_node_root

__all__ = ["CONTROL_FILES", "LAYOUT_DIRS", "init_node_root"]
