"""The node's servers started by a peer or a coordinator over SSH, without the command line.

``haios --output json node gossip-serve|participate|replica-serve|recover ROOT`` is what another
machine runs here — every agent on every peer, every ``haios run`` — so it starts with only the modules its
server needs, not every command's (a fifth of the time, which is what keeps a loaded node answering).
The words are exactly those the transport sends; anything else goes through the command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HaiosError, UsageError

if TYPE_CHECKING:
    from ..transport.base import Handler

# "recover" takes one request on stdin, not a conversation
SERVERS = ("gossip-serve", "participate", "replica-serve", "recover")


def plug_replication() -> None:
    """Plug WAL replication into the nodes this process writes (imported when one is written)."""
    from .. import replication  # noqa: F401


def handler(name: str) -> Handler:
    """The server's handler, imported only when that server starts: every other command pays nothing
    for the check in :func:`haios.cli.main`."""
    plug_replication()
    if name == "gossip-serve":
        from ..node.gossip import serve as gossip

        return gossip
    if name == "participate":
        from ..node.runner import participate

        return participate
    if name == "replica-serve":
        from ..replication.links import handle

        return handle
    from ..node.recover import dispatch

    return dispatch


def fast_server(argv: list[str]) -> str | None:
    """The server ``argv`` asks for, when it is exactly one of :data:`SERVERS` the way the transport
    words it (``--output json node NAME ROOT``)."""
    if len(argv) == 5 and argv[:3] == ["--output", "json", "node"] and argv[3] in SERVERS:
        return argv[3]
    return None


def serve(name: str, root: str) -> int:
    """Answer requests on stdin for ROOT with the server ``name``; errors as the command line's JSON."""
    from ..transport.base import serve_lines

    handle_one = handler(name)

    def write(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()

    try:
        if name == "recover":
            text = sys.stdin.read()
            try:
                request = json.loads(text)
            except ValueError as exc:
                raise UsageError(f"the request is not valid JSON: {exc}") from exc
            if not isinstance(request, dict):
                raise UsageError("the request must be a JSON object")
            write(json.dumps(handle_one(Path(root), request), separators=(",", ":")) + "\n")
        else:
            serve_lines(Path(root), handle_one, sys.stdin, write)
    except HaiosError as exc:
        sys.stdout.write(json.dumps({"error": exc.to_wire()}) + "\n")
        sys.stderr.write(f"error: {exc.one_line()}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the peer hung up (a broken pipe): there is nobody left to tell
        sys.stderr.write(f"error: {root}: the conversation ended: {exc.strerror or exc}\n")
        return 1
    return 0
