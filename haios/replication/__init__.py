"""Sync-majority WAL replication (SPEC §6.1): the origin's :class:`Replicator`, the peers' replica
store, the links between them, and restoring a node's WAL from its replicas."""

from .origin import QuorumError, Replicator, Settings, quorum, replicator_for
from .peer import REPLICAS_DIR, replica_dir

__all__ = ["REPLICAS_DIR", "QuorumError", "Replicator", "Settings", "quorum", "replica_dir", "replicator_for"]
