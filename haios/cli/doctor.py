"""``haios doctor`` and ``haios status``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..detect.doctor import DoctorReport, run_doctor
from . import _render
from ._options import Output, OutputOpt, RepoOpt, resolve

_STYLE = {"OK": "green", "TORN-TAIL": "yellow", "SLOW": "yellow", "UNHEALTHY": "yellow"}


def _table(report: DoctorReport) -> Table:
    table = Table(title=f"cluster {report.repo}", show_lines=False)
    for column in ("node", "health", "g", "phase", "last heartbeat", "WAL", "lamport"):
        table.add_column(column)
    for row in report.nodes:
        style = _STYLE.get(row.health, "red")
        age = "never" if row.heartbeat_age_s is None else f"{row.heartbeat_age_s:.0f} s ago"
        table.add_row(
            row.node, f"[{style}]{row.health}[/]", str(row.g), str(row.ph), age, row.wal, str(row.last_lamport)
        )
    return table


def doctor(
    ctx: typer.Context,
    full: Annotated[
        bool, typer.Option("--full", help="Verify every WAL from its first byte, not only what is new.")
    ] = False,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Run every detector and integrity check; print each finding with its evidence and the command that fixes it.

    Exit 0 when the cluster is healthy, 2 when there are findings, 1 on error.
    """
    opts = resolve(ctx, repo=repo, output=output)
    report = run_doctor(opts.repo, full=full)
    if opts.output is not Output.text:
        _render.emit_json(report.to_json())
        return 0 if report.healthy else 2
    console = _render.console()
    if report.nodes:
        console.print(_table(report))
    if report.pause_reason:
        _render.out(f"note: {report.pause_reason}", style="yellow")
    for f in report.findings:
        counted = f in report.counted
        where = " ".join(x for x in (",".join(f.nodes), f"g={f.g}" if f.g is not None else "", f.phase or "") if x)
        _render.out("")
        _render.out(
            f"{f.severity.upper()} {f.kind}{' ' + where if where else ''}: {f.summary}",
            style="red" if counted else "yellow",
        )
        for key, value in f.evidence.items():
            _render.out(f"    {key}: {value}")
        _render.out(f"    fix: {f.fix}", style="cyan")
    if report.healthy:
        _render.out(f"{report.repo}: healthy ({len(report.nodes)} nodes)", style="green")
        return 0
    _render.info(f"{len(report.counted)} finding{'s' if len(report.counted) != 1 else ''}")
    return 2


def status(ctx: typer.Context, repo: RepoOpt = None, output: OutputOpt = None) -> int:
    """The one-screen cluster view: each node's health, position, heartbeat and WAL."""
    opts = resolve(ctx, repo=repo, output=output)
    report = run_doctor(opts.repo)
    if opts.output is not Output.text:
        data = report.to_json()
        _render.emit_json({k: data[k] for k in ("schema", "repo", "generated_at", "healthy", "nodes")})
        return 0
    _render.console().print(_table(report))
    return 0
