"""``haios agent ROOT``: the node's daemon (heartbeat and gossip), and ``--check`` whether it runs."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from ..errors import EXIT_ERROR, EXIT_OK
from ..ops.agent import Agent, agent_lock, running
from . import _render
from ._options import Output, current

RootArg = Annotated[Path, typer.Argument(help="The node root.", exists=True, file_okay=False, show_default=False)]


def _log(line: str) -> None:
    sys.stderr.write(f"haios agent: {line}\n")
    sys.stderr.flush()


def agent(
    root: RootArg,
    once: Annotated[
        bool, typer.Option("--once", help="One round (heartbeat and gossip), then exit: for cron.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Say whether an agent runs for ROOT (exit 0) or not (exit 1).")
    ] = False,
) -> int:
    """Keep the node's heartbeat and its gossip with its peers going, one round per heartbeat interval.

    Each round writes the next heartbeat, talks to a few members chosen at random (over SSH with
    pinned host keys for remote ones, one kept-open session per peer) and decides the node's
    partition status. Membership, peers and intervals come from the node's policy file, as the
    last reconcile pushed it. SIGTERM or SIGINT ends the agent between rounds (exit 0); one agent
    runs per node root.
    """
    if check:
        pid = running(root)
        if current.get().output is not Output.text:
            _render.emit_json({"root": str(root), "running": pid is not None, "pid": pid})
        else:
            _render.out(f"an agent runs for {root} (pid {pid})" if pid is not None else f"no agent runs for {root}")
        return EXIT_OK if pid is not None else EXIT_ERROR
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    with agent_lock(root):
        worker = Agent(root, log=_log, clock=time.time)
        if not once:
            _log(f"{root}: started (pid {os.getpid()})")
        rounds = worker.run(stop, once=once)
        if not once:
            _log(f"{root}: stopped after {rounds} round(s)")
    return EXIT_OK
