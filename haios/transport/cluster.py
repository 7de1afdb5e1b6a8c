"""The repo's nodes behind one transport: :func:`open_transport` gives each node the transport it
names in ``haios.yaml``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.model import NodeSpec, RepoConfig
from ..errors import TransportError
from ..layout import MIRROR_DIR
from ..node.root import init_node_root
from .base import Completed, Exchange, Handler, Transport
from .local import LocalTransport
from .ssh import SshTransport

KNOWN_HOSTS = "known_hosts"  # in the desired-state repo: pinned host keys of nodes without host_key


class ClusterTransport:
    """One Transport over the nodes of a repo, each reached by its own kind."""

    def __init__(self, parts: dict[str, Transport]) -> None:
        self.parts = parts

    def _part(self, node: str) -> Transport:
        try:
            return self.parts[node]
        except KeyError:
            raise TransportError(f"{node}: unknown node") from None

    def nodes(self) -> list[str]:
        return sorted(self.parts)

    @property
    def all_local(self) -> bool:
        """Whether every node's files are on this machine (observation may then use processes)."""
        return all(isinstance(p, LocalTransport) for p in self.parts.values())

    def read_file(self, node: str, relpath: str) -> bytes | None:
        return self._part(node).read_file(node, relpath)

    def local_view(self, node: str) -> Path:
        return self._part(node).local_view(node)

    def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        return self._part(node).call(node, request)

    def run(self, node: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> Completed:
        return self._part(node).run(node, argv, timeout=timeout, env=env)

    def exchange(self, node: str, *, command: list[str], handler: Handler, timeout: float | None = None) -> Exchange:
        return self._part(node).exchange(node, command=command, handler=handler, timeout=timeout)

    def provision(self, node: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Create the node root if it does not exist (an existing one is never touched)."""
        part = self._part(node)
        if isinstance(part, LocalTransport):
            return {"node": node, "created": init_node_root(part.root(node), node, policy)}
        provisioner = getattr(part, "provision", None)
        if provisioner is None:
            raise TransportError(f"{node}: this transport cannot create node roots")
        answer: dict[str, Any] = provisioner(node, policy)
        return answer

    def version(self, node: str) -> str:
        """The haios version the node runs (a local node runs this one)."""
        part = self._part(node)
        asker = getattr(part, "version", None)
        if asker is None:
            return __version__
        answer: str = asker(node)
        return answer

    def close(self) -> None:
        for part in {id(p): p for p in self.parts.values()}.values():
            closer = getattr(part, "close", None)
            if closer is not None:
                closer()


def transport_for(
    specs: Iterable[NodeSpec],
    *,
    base: Path,
    mirror: Path,
    known_hosts: Path | None = None,
    connect_timeout: float | None = None,
) -> ClusterTransport:
    """Local nodes (roots relative to ``base``) through one :class:`LocalTransport`, ssh nodes through
    one :class:`SshTransport` (pinning host keys in ``known_hosts``, mirroring into ``mirror``)."""
    specs = list(specs)
    local = {n.name: n.local_root(base) for n in specs if n.transport == "local"}
    parts: dict[str, Transport] = {}
    if local:
        lt = LocalTransport(local)
        parts.update(dict.fromkeys(local, lt))
    ssh_specs = [n for n in specs if n.transport == "ssh"]
    if ssh_specs:
        st = SshTransport(ssh_specs, known_hosts=known_hosts, mirror=mirror, connect_timeout=connect_timeout)
        parts.update(dict.fromkeys((s.name for s in ssh_specs), st))
    return ClusterTransport(parts)


def open_transport(repo: Path, config: RepoConfig) -> ClusterTransport:
    """The repo's nodes, each through the transport ``haios.yaml`` names for it."""
    return transport_for(config.cluster.nodes, base=repo, mirror=repo / MIRROR_DIR, known_hosts=repo / KNOWN_HOSTS)
