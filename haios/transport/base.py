"""The Transport protocol: everything above it is the same whether a node is local or remote."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Transport(Protocol):
    """Reads files of a node root. Implementations translate their own errors to TransportError."""

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
