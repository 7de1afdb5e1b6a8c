"""Sync-majority WAL replication (SPEC §6.1): the origin's :class:`Replicator`, the peers' replica
store, the links between them, and restoring a node's WAL from its replicas.

Importing it plugs it into every node of this program (:mod:`haios.node.replicas`)."""

from ..errors import QuorumError
from ..node.replicas import Replication, install
from .agent import OPERATIONS
from .origin import Replicator, Settings, quorum, replicator_for
from .peer import REPLICAS_DIR, replica_dir
from .restore import restore_wal

install(
    Replication(
        replicator_for=lambda node, root, policy, clock: replicator_for(node, root, policy, clock=clock),
        heal=lambda root, links: restore_wal(root, links=links, force=True),
        operations=OPERATIONS,
    )
)

__all__ = ["REPLICAS_DIR", "QuorumError", "Replicator", "Settings", "quorum", "replica_dir", "replicator_for"]
