"""The command line (typer). Commands parse arguments, call one library function and render the result.

``main`` answers a bare ``haios --version`` before the command line itself is imported: the version
is what a script asks for most often, and it should not cost the import of every command. The node's
servers that peers start over SSH skip it too (:mod:`._serve`), and so does what a phase's command
calls per sub-step (:mod:`._steps`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    from typer import Typer

__all__ = ["app", "main"]


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"haios {__version__}\n")
        return
    from ._serve import fast_server, serve

    server = fast_server(sys.argv[1:])
    if server is not None:  # a node's server for a peer: started with what it needs only
        sys.exit(serve(server, sys.argv[-1]))
    from ._steps import fast_step, run_fast

    call = fast_step(sys.argv[1:])
    if call is not None:  # a phase's sub-step: the node's modules only, not the command line
        sys.exit(run_fast(call))
    from ._app import main as run

    run()


def __getattr__(name: str) -> Typer:
    if name == "app":
        from ._app import app

        return app
    raise AttributeError(f"module 'haios.cli' has no attribute {name!r}")
