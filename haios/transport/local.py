"""The local transport: node roots are directories on this machine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import TransportError


class LocalTransport:
    def __init__(self, roots: Mapping[str, Path]) -> None:
        self.roots = dict(roots)

    def nodes(self) -> list[str]:
        return sorted(self.roots)

    def root(self, node: str) -> Path:
        try:
            return self.roots[node]
        except KeyError:
            raise TransportError(f"{node}: unknown node") from None

    def local_view(self, node: str) -> Path:
        return self.root(node)

    def read_file(self, node: str, relpath: str) -> bytes | None:
        path = self.root(node) / relpath
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransportError(f"{node}: cannot read {relpath}: {exc.strerror}") from exc
