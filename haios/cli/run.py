"""``haios run``: the phase loop on real hosts, driven by the desired state in git."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from ..ops.run import Step
from ..ops.run import run as run_loop
from . import _render
from ._options import Output, OutputOpt, RepoOpt, resolve


def run(
    ctx: typer.Context,
    iterations: Annotated[
        int | None,
        typer.Option("--iterations", help="Run this many iterations from where the cluster is.", show_default=False),
    ] = None,
    until_g: Annotated[
        int | None,
        typer.Option("--until-g", help="Run until iteration G has gone through IDLE.", show_default=False),
    ] = None,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Drive the phase loop on the members: every transition (g, phase) as two-phase commit, each
    member running the phase's command from desired/state.yaml ('haios node run' on the node).

    How far: --iterations N, --until-g G, or the desired state's max_g. The desired state is read
    again before every transition: a max_g or suspend committed meanwhile stops the run there. A
    member that is unreachable or PARTITIONED is left out while a majority takes part, and caught
    up once it is back. SIGTERM or Ctrl-C stops the run between transitions.

    Exit 0 done (or stopped where the desired state says); 2 stopped before the goal (a signal, or
    max_g/suspend short of --iterations/--until-g), or members left behind (named in the note; a
    later run catches them up); 3 blocked: a phase command failed, no majority,
    or a transition is half done (run 'haios reconcile'); 4 another 'haios run' or a recovery holds
    the lease; 1 on error.
    """
    opts = resolve(ctx, repo=repo, output=output)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            _render.info(f"{signal.Signals(signum).name}: stopping after the transition under way")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)

    def progress(step: Step) -> None:
        extra = f"; left out {', '.join(sorted(step.left_out))}" if step.left_out else ""
        failed = f"; failed: {'; '.join(step.failed.values())}" if step.failed else ""
        _render.info(
            f"g={step.g} {step.phase}: {step.outcome} on {len(step.participants)} member(s) "
            f"in {step.seconds:.2f} s{extra}{failed}"
        )

    report = run_loop(opts.repo, iterations=iterations, until_g=until_g, stop=stop, progress=progress)
    if opts.output is not Output.text:
        _render.emit_json(report.to_json())
        return report.code
    style = None if report.code == 0 else "yellow"
    commit = f" (commit {report.commit[:12]})" if report.commit else ""
    _render.out(f"{report.committed} transition(s) committed; {report.note}{commit}", style=style)
    return report.code
