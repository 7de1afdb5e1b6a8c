"""How haios reaches a node's root: the Transport protocol, the local and SSH implementations, and
:func:`open_transport`, which gives the repo's nodes the transport each one names in ``haios.yaml``.

The names are imported when first used: a node writing its WAL (which may ship it to its replicas)
needs the protocol, not SSH."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ..layout import MIRROR_DIR
    from .base import DEFAULT_PARALLEL, Completed, Exchange, Handler, Transport
    from .cluster import KNOWN_HOSTS, ClusterTransport, open_transport, transport_for
    from .local import LocalTransport
    from .ssh import SshTransport

__all__ = [
    "DEFAULT_PARALLEL",
    "KNOWN_HOSTS",
    "MIRROR_DIR",
    "ClusterTransport",
    "Completed",
    "Exchange",
    "Handler",
    "LocalTransport",
    "SshTransport",
    "Transport",
    "open_transport",
    "transport_for",
]

_WHERE = {
    "DEFAULT_PARALLEL": "haios.transport.base",
    "KNOWN_HOSTS": "haios.transport.cluster",
    "ClusterTransport": "haios.transport.cluster",
    "open_transport": "haios.transport.cluster",
    "transport_for": "haios.transport.cluster",
    "MIRROR_DIR": "haios.layout",
    "Completed": "haios.transport.base",
    "Exchange": "haios.transport.base",
    "Handler": "haios.transport.base",
    "Transport": "haios.transport.base",
    "LocalTransport": "haios.transport.local",
    "SshTransport": "haios.transport.ssh",
}


__getattr__ = exports(__name__, _WHERE)
