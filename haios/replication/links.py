"""How an origin reaches its replica peers: one conversation (a transport's
:class:`~haios.transport.base.Exchange`) per peer.

A local peer's root is on this machine: the request runs in-process (:func:`handle`). An ssh peer
runs ``haios node replica-serve ROOT`` (:func:`serve`) over one long-lived SSH channel that answers
one JSON line per request, so a durable append costs one round trip, not a new process on the peer.
Both raise TransportError when the peer cannot be reached, and the peer's own errors as their
HaiosError class.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..config.model import NodeSpec
from ..errors import UsageError
from ..transport.base import Exchange, serve_lines
from . import peer

OPS = ("replica_append", "replica_status", "replica_fetch")
SERVE = ["node", "replica-serve"]  # the peer's server: haios --output json node replica-serve ROOT


def handle(root: Path, request: dict[str, Any], *, sync: Callable[[int], None] = os.fdatasync) -> dict[str, Any]:
    """Run one replica request on the peer whose root is ``root`` (``sync``: its fdatasync)."""
    op = request.get("op")
    if op == "replica_append":
        return peer.receive(root, request, sync=sync)
    if op == "replica_status":
        origin = str(request.get("origin"))
        return peer.status(root, origin, check=bool(request.get("verify", True)), prefix=bool(request.get("prefix")))
    if op == "replica_fetch":
        try:
            args = (str(request["origin"]), str(request["segment"]), int(request["offset"]), int(request["limit"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"replica_fetch: bad arguments ({exc})") from None
        return peer.fetch(root, *args)
    raise UsageError(f"unknown replica operation {op!r} (known: {', '.join(OPS)})")


def serve(root: Path, lines: Iterable[str], write: Callable[[str], None]) -> int:
    """``haios node replica-serve``: answer one JSON request per line with :func:`handle`."""
    return serve_lines(root, handle, lines, write)


def open_links(node: str, peers: dict[str, dict[str, Any]], *, base: Path, timeout: float) -> dict[str, Exchange]:
    """Conversations with the peers a policy names (``{name: {"transport": "local", "root": ...}}`` or
    ssh specs), through the transports every other request to a node takes."""
    specs = [
        NodeSpec(
            name=name,
            transport=spec.get("transport", "local"),
            root=spec["root"],
            address=spec.get("address"),
            port=int(spec.get("port", 22)),
            user=spec.get("user", "haios"),
            host_key=spec.get("host_key"),
        )
        for name, spec in sorted(peers.items())
        if name != node
    ]
    from ..transport.cluster import transport_for  # SSH only when a link needs it

    cluster = transport_for(specs, base=base, mirror=base / peer.REPLICAS_DIR / ".mirror", connect_timeout=timeout)
    return {s.name: cluster.exchange(s.name, command=SERVE, handler=handle) for s in specs}
