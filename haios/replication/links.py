"""How an origin reaches its replica peers: one request/answer link per peer.

A local peer's root is on this machine: the request runs in-process. An ssh peer runs
``haios node replica-serve ROOT`` over one long-lived SSH channel that answers one JSON line per
request, so a durable append costs one round trip, not a new process on the peer. Both raise
TransportError when the peer cannot be reached, and the peer's own errors as their HaiosError class.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from ..config.model import NodeSpec
from ..errors import HaiosError, TransportError, UsageError, from_wire
from ..transport.ssh import SshTransport, ssh_error
from . import peer

OPS = ("replica_append", "replica_status", "replica_fetch")


def handle(root: Path, request: dict[str, Any], *, sync: Callable[[int], None] = os.fdatasync) -> dict[str, Any]:
    """Run one replica request on the peer whose root is ``root`` (``sync``: its fdatasync)."""
    op = request.get("op")
    if op == "replica_append":
        return peer.receive(root, request, sync=sync)
    if op == "replica_status":
        return peer.status(root, str(request.get("origin")), check=bool(request.get("verify", True)))
    if op == "replica_fetch":
        try:
            args = (str(request["origin"]), str(request["segment"]), int(request["offset"]), int(request["limit"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"replica_fetch: bad arguments ({exc})") from None
        return peer.fetch(root, *args)
    raise UsageError(f"unknown replica operation {op!r} (known: {', '.join(OPS)})")


def error_answer(exc: HaiosError) -> dict[str, Any]:
    return {"error": exc.to_wire()}


def serve(root: Path, lines: Iterable[str], write: Callable[[str], None]) -> int:
    """Answer one JSON request per line until the input ends (``haios node replica-serve``); returns
    how many requests were answered. A bad request gets an error answer; the loop goes on."""
    if not (root / "state.txt").exists():
        raise UsageError(f"{root}: not a node root (no state.txt)")
    answered = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise UsageError("a replica request must be a JSON object")
            answer = handle(root, request)
        except HaiosError as exc:
            answer = error_answer(exc)
        except ValueError as exc:
            answer = error_answer(UsageError(f"a replica request that is not JSON: {exc}"))
        write(json.dumps(answer, separators=(",", ":")) + "\n")
        answered += 1
    return answered


class PeerLink(Protocol):
    name: str

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request, wait for its answer. TransportError when the peer cannot be reached."""
        ...

    def close(self) -> None: ...


def _answer(name: str, root: str, answer: dict[str, Any]) -> dict[str, Any]:
    if isinstance(answer.get("error"), dict):
        raise from_wire(answer["error"], node=name)
    return answer


class LocalLink:
    """A peer whose root is a directory on this machine (``sync``: its fdatasync, which the simulator
    and the tests slow down to make a slow disk)."""

    def __init__(self, name: str, root: Path, *, sync: Callable[[int], None] = os.fdatasync) -> None:
        self.name = name
        self.root = root
        self.sync = sync

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        if not (self.root / "state.txt").exists():
            raise TransportError(f"{self.name}: no node root at {self.root}")
        try:
            return handle(self.root, request, sync=self.sync)
        except OSError as exc:
            raise TransportError(f"{self.name}: {exc.strerror or exc} ({self.root})") from None

    def close(self) -> None:
        return None


class SshLink:
    """A peer reached over SSH: one ``haios node replica-serve`` per link, kept open."""

    def __init__(self, spec: NodeSpec, transport: Any, timeout: float) -> None:
        self.name = spec.name
        self.spec = spec
        self.transport = transport  # an SshTransport (it owns the connection and the pinned host key)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._stream: tuple[Any, IO[bytes], Iterator[bytes]] | None = None

    def _open(self) -> tuple[Any, IO[bytes], Iterator[bytes]]:
        if self._stream is None:
            channel = self.transport.open_stream(
                self.name, ["--output", "json", "node", "replica-serve", self.spec.root]
            )
            channel.settimeout(self.timeout)
            out = channel.makefile("rb")
            self._stream = (channel, channel.makefile_stdin("wb"), iter(out.readline, b""))
        return self._stream

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                channel, stdin, lines = self._open()
                stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
                stdin.flush()
                line = next(lines, b"")
            except HaiosError:
                self.close()
                raise
            except Exception as exc:  # noqa: BLE001 - paramiko and socket errors of every kind
                self.close()
                raise ssh_error(self.name, "replication link broke", exc) from exc
            if not line:
                problem = (
                    channel.recv_stderr(4096).decode(errors="replace").strip() if channel.recv_stderr_ready() else ""
                )
                self.close()
                raise TransportError(
                    f"{self.name}: the replica server ended{': ' + ' '.join(problem.split())[:200] if problem else ''}"
                )
            try:
                answer = json.loads(line)
            except ValueError:
                self.close()
                raise TransportError(
                    f"{self.name}: unexpected answer from the replica server: {line[:200]!r}"
                ) from None
        return _answer(self.name, self.spec.root, answer)

    def close(self) -> None:
        """End the session and the connection to the peer (the next request opens both again)."""
        if self._stream is not None:
            channel = self._stream[0]
            self._stream = None
            with contextlib.suppress(Exception):  # closing a broken channel may fail; it is gone either way
                channel.close()
        self.transport.disconnect(self.name)


def open_links(node: str, peers: dict[str, dict[str, Any]], *, base: Path, timeout: float) -> dict[str, PeerLink]:
    """Links to the peers a policy names: ``{name: {"transport": "local", "root": ...}}`` or ssh specs."""
    links: dict[str, PeerLink] = {}
    ssh_specs = []
    for name, spec in sorted(peers.items()):
        if name == node:
            continue
        if spec.get("transport", "local") == "local":
            root = Path(spec["root"])
            links[name] = LocalLink(name, root if root.is_absolute() else base / root)
        else:
            ssh_specs.append(
                NodeSpec(
                    name=name,
                    transport="ssh",
                    root=spec["root"],
                    address=spec.get("address"),
                    port=int(spec.get("port", 22)),
                    user=spec.get("user", "haios"),
                    host_key=spec.get("host_key"),
                )
            )
    if ssh_specs:
        transport = SshTransport(ssh_specs, mirror=base / peer.REPLICAS_DIR / ".mirror", connect_timeout=timeout)
        for ssh_spec in ssh_specs:
            links[ssh_spec.name] = SshLink(ssh_spec, transport, timeout)
    return links
