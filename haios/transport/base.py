"""The Transport protocol: everything above it is the same whether a node is local or remote."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import HaiosError, UsageError

T = TypeVar("T")
DEFAULT_PARALLEL = 32  # remote nodes observed at once (--max-parallel)


def fan_out(
    transport: Any, nodes: Sequence[str], work: Callable[[str], T], *, parallelism: int = DEFAULT_PARALLEL
) -> Iterator[tuple[str, T | HaiosError]]:
    """``work(node)`` for each node, yielding the node with what it returned or the HaiosError it
    raised (unreachable, refused: one node's failure is its own), as each finishes. When a node is
    reached over the network, up to ``parallelism`` run at once (the time is spent waiting on the
    nodes); when every node is local, one after another (the work is this process's CPU)."""
    if getattr(transport, "all_local", True) or parallelism <= 1 or len(nodes) <= 1:
        for node in nodes:
            try:
                yield node, work(node)
            except HaiosError as exc:
                yield node, exc
        return
    with ThreadPoolExecutor(max_workers=min(parallelism, len(nodes)), thread_name_prefix="haios-fan-out") as pool:
        futures = {pool.submit(work, node): node for node in nodes}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except HaiosError as exc:
                yield futures[future], exc


Handler = Callable[[Path, dict[str, Any]], dict[str, Any]]
"""A node-side server run in this process: (node root, request) -> answer."""


@dataclass(frozen=True)
class Completed:
    """A command that ran on a node."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Exchange(Protocol):
    """A long-lived conversation with one node: one JSON request, then its JSON answer, in turn (the
    replication stream). The node's HaiosErrors arrive as themselves; a node that cannot be reached,
    or a conversation that broke, is a TransportError, and the next request starts it again."""

    name: str

    def request(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


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

    def exchange(self, node: str, *, command: list[str], handler: Handler, timeout: float | None = None) -> Exchange:
        """A conversation with a server on the node: ``haios --output json COMMAND ROOT`` answering a
        JSON line per request line on a remote node; ``handler(root, request)`` on a node whose root is
        on this machine. ``timeout``: the longest silence to bear while waiting for an answer (a long
        request keeps the server sending :data:`ALIVE` lines; default: as for a connection)."""
        ...


ALIVE = '{"alive":1}\n'  # what a server sends while a request takes long: the client waits on
ALIVE_EVERY = 1.0  # seconds between two of them (a client's timeout is the longest silence it bears)


def serve_lines(root: Path, handler: Handler, lines: Iterable[str], write: Callable[[str], None]) -> int:
    """The node's end of an :class:`Exchange`: answer one JSON request per line of ``lines`` with
    ``handler(root, request)`` until they end; returns how many were answered. A bad request gets an
    error answer (its HaiosError on the wire, :meth:`HaiosError.to_wire`) and the loop goes on.
    While a request takes longer than :data:`ALIVE_EVERY`, an :data:`ALIVE` line goes out each time
    that passes, so the client can tell a long request (a phase's command) from a node that is gone."""
    if not (root / "state.txt").exists():
        raise UsageError(f"{root}: not a node root (no state.txt)")
    answered = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="haios-serve") as pool:
        for line in lines:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise UsageError("a request must be a JSON object")
                working = pool.submit(handler, root, request)
                while True:
                    try:
                        answer = working.result(timeout=ALIVE_EVERY)
                        break
                    except FutureTimeout:
                        write(ALIVE)
            except HaiosError as exc:
                answer = {"error": exc.to_wire()}
            except ValueError as exc:
                answer = {"error": UsageError(f"a request that is not JSON: {exc}").to_wire()}
            write(json.dumps(answer, separators=(",", ":")) + "\n")
            answered += 1
    return answered
