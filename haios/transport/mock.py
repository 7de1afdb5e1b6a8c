"""An in-memory transport for unit tests: no processes, no network, every operation recorded.

Each node is a mapping of relative paths to bytes; :meth:`MockTransport.local_view` writes it out to
a directory so the observation pass can read it, recovery calls go to a handler the test supplies,
and commands get scripted answers. A node in ``down`` raises TransportError everywhere, as an
unreachable one would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import TransportError
from ..fsutil import atomic_write, makedirs_durable
from .base import Completed
from .base import Handler as NodeHandler

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]
Command = Callable[[str, list[str]], Completed]


class MockExchange:
    """A conversation with a mock node: each request goes to the mock's handler, logged as "exchange"."""

    def __init__(self, mock: MockTransport, name: str) -> None:
        self.mock = mock
        self.name = name

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        self.mock._up(self.name, "exchange", request)
        if self.mock.handler is None:
            raise TransportError(f"{self.name}: this mock answers no requests")
        return self.mock.handler(self.name, request)

    def close(self) -> None:
        return None


class MockTransport:
    all_local = False  # its views are fetched, like a remote node's

    def __init__(
        self,
        files: Mapping[str, Mapping[str, bytes]],
        *,
        mirror: Path,
        handler: Handler | None = None,
        command: Command | None = None,
    ) -> None:
        self.files = {node: dict(content) for node, content in files.items()}
        self.mirror = mirror
        self.handler = handler
        self.command = command
        self.down: set[str] = set()
        self.log: list[tuple[str, str, Any]] = []  # (node, operation, argument)

    @classmethod
    def from_roots(cls, roots: Mapping[str, Path], *, mirror: Path, **kw: Any) -> MockTransport:
        """Snapshot real node roots (every file) into memory."""
        files = {
            node: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
            for node, root in roots.items()
        }
        return cls(files, mirror=mirror, **kw)

    def _up(self, node: str, operation: str, argument: Any) -> dict[str, bytes]:
        self.log.append((node, operation, argument))
        if node not in self.files:
            raise TransportError(f"{node}: unknown node")
        if node in self.down:
            raise TransportError(f"{node}: unreachable (mock)")
        return self.files[node]

    def nodes(self) -> list[str]:
        return sorted(self.files)

    def read_file(self, node: str, relpath: str) -> bytes | None:
        return self._up(node, "read_file", relpath).get(relpath)

    def local_view(self, node: str) -> Path:
        content = self._up(node, "local_view", None)
        root = self.mirror / node
        for rel, data in content.items():
            target = root / rel
            makedirs_durable(target.parent)
            if not target.exists() or target.read_bytes() != data:
                atomic_write(target, data, durable=False)
        for stale in [p for p in root.rglob("*") if p.is_file() and str(p.relative_to(root)) not in content]:
            stale.unlink()
        return root

    def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        self._up(node, "call", request)
        if self.handler is None:
            raise TransportError(f"{node}: this mock answers no recovery calls")
        return self.handler(node, request)

    def run(self, node: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> Completed:
        self._up(node, "run", argv)
        if self.command is None:
            return Completed(127, "", f"{argv[0]}: not scripted in this mock")
        return self.command(node, argv)

    def exchange(
        self, node: str, *, command: list[str], handler: NodeHandler, timeout: float | None = None
    ) -> MockExchange:
        """Requests go to the mock's ``handler`` (``handler`` here is the node-side server a real
        node would run, which a mock has no root for)."""
        self._up(node, "exchange", command)
        return MockExchange(self, node)
