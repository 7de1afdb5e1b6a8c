"""The Transport protocol: everything above it is the same whether a node is local or remote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Completed:
    """A command that ran on a node."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Transport(Protocol):
    """Reaches node roots. Implementations translate their own errors to TransportError."""

    def nodes(self) -> list[str]:
        """The nodes this transport reaches."""
        ...

    def read_file(self, node: str, relpath: str) -> bytes | None:
        """The bytes of ``<root of node>/relpath``, or None when the file does not exist."""
        ...

    def local_view(self, node: str) -> Path:
        """A local directory with the node root's files, current as of this call.

        For a local node it is the root itself; a remote transport keeps a mirror, fetching only what
        is new (WAL segments grow by appending), which is what makes incremental reads cheap.
        """
        ...

    def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run one recovery operation on the node (:func:`haios.node.recover.dispatch`); HaiosErrors
        raised there arrive here as themselves (FencedError stays FencedError)."""
        ...

    def run(self, node: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> Completed:
        """Run a command in the node root (a compensating playbook); never raises for a non-zero exit."""
        ...
