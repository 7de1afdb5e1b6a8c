"""``haios doctor`` and ``haios status``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..config import load_repo
from ..ops.doctor import DoctorReport, run_doctor
from ..ops.status import membership, open_traces
from ..transport import DEFAULT_PARALLEL
from . import _render
from ._options import MaxParallelOpt, Output, OutputOpt, RepoOpt, resolve
from .metrics import MetricsTextfileOpt, PushgatewayOpt, write_if_asked

_STYLE = {"OK": "green", "NEW": "cyan", "TORN-TAIL": "yellow", "SLOW": "yellow", "UNHEALTHY": "yellow"}


def _table(report: DoctorReport) -> Table:
    table = Table(title=f"cluster {report.repo}", show_lines=False)
    for column in ("node", "health", "g", "phase", "last heartbeat", "WAL", "lamport"):
        table.add_column(column)
    for row in report.nodes:
        style = _STYLE.get(row.health, "red")
        age = "never" if row.heartbeat_age_s is None else f"{row.heartbeat_age_s:.0f} s ago"
        cells = (row.node, row.health, row.g, row.ph, age, row.wal, row.last_lamport)
        table.add_row(*(_render.cell(v, style=style if v is row.health else "") for v in cells))
    return table


def doctor(
    ctx: typer.Context,
    full: Annotated[
        bool, typer.Option("--full", help="Verify every WAL from its first byte, not only what is new.")
    ] = False,
    max_parallel: MaxParallelOpt = DEFAULT_PARALLEL,
    metrics_textfile: MetricsTextfileOpt = None,
    pushgateway: PushgatewayOpt = None,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """Run every detector and integrity check; print each finding with its evidence and the command that fixes it.

    Exit 0 when the cluster is healthy, 2 when there are findings, 5 when a node was refused because
    its host key is not the pinned one, 1 on error.
    """
    opts = resolve(ctx, repo=repo, output=output)
    report = run_doctor(opts.repo, full=full, parallelism=max_parallel)
    write_if_asked(opts.repo, metrics_textfile, pushgateway)
    if opts.output is Output.ndjson:
        for event in report.events():
            _render.emit_event(event)
        return report.exit_code()
    if opts.output is not Output.text:
        _render.emit_json(report.to_json())
        return report.exit_code()
    console = _render.console()
    if report.nodes:
        console.print(_table(report))
    if report.pause_reason and any(report.held_back(f) for f in report.findings):
        _render.out(f"note: {report.pause_reason}", style="yellow")
    for f in report.findings:
        held = report.held_back(f)
        where = " ".join(x for x in (",".join(f.nodes), f"g={f.g}" if f.g is not None else "", f.phase or "") if x)
        _render.out("")
        _render.out(
            f"{f.severity.upper()}{' (held back)' if held else ''} {f.kind}{' ' + where if where else ''}: {f.summary}",
            style={"critical": "red", "warning": "yellow"}.get(f.severity, "") if not held else "yellow",
        )
        for key, value in f.evidence.items():
            _render.out(f"    {key}: {_render.words(value, key)}")
        _render.out(f"    fix: {_render.runnable(f.fix)}", style="cyan")
    if report.healthy:
        notes = len(report.findings)
        _render.out(
            f"{report.repo}: healthy ({len(report.nodes)} nodes{f', {notes} note' + ('s' if notes != 1 else '') if notes else ''})",
            style="green",
        )
        return 0
    serious = [f for f in report.findings if f.severity != "info"]
    waiting = sum(1 for f in serious if report.held_back(f))
    _render.info(
        f"{len(serious)} finding{'s' if len(serious) != 1 else ''}" + (f" ({waiting} held back)" if waiting else "")
    )
    return report.exit_code()


def _cost(cost: list[dict[str, object]]) -> str:
    return (
        ", ".join(f"{c['amount']} {c['currency']}/{c['limit']}" + (" OVER" if c.get("over") else "") for c in cost)
        or "-"
    )


def _trace_lines(traces: list[dict[str, Any]]) -> None:
    """Each open trace as a line of its own, its id whole whatever the terminal's width (the id is
    what an override names), then what holds it on an indented line."""
    _render.out("open recovery traces", style="bold")
    for t in traces:
        _render.out(f"  {t['trace_id']}  g={t['g']} {t['phase']}  {t['state']}", style="yellow")
        breakers = ", ".join(f"{name}: {state}" for name, state in t["breakers"].items()) or "-"
        _render.out(
            f"      attempts {t['attempts']}, next attempt {t['next_attempt_utc'] or '-'}, "
            f"breakers {breakers}, cost {_cost(t['cost'])}"
        )


def status(
    ctx: typer.Context,
    max_parallel: MaxParallelOpt = DEFAULT_PARALLEL,
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """The one-screen cluster view: each node's health, position, heartbeat and WAL; each open recovery
    trace with its compensation attempts, next attempt, circuit breakers and cost; evictions."""
    opts = resolve(ctx, repo=repo, output=output)
    report = run_doctor(opts.repo, parallelism=max_parallel)
    config = load_repo(opts.repo, degraded=True)  # a bad policy file is one of the findings
    traces = open_traces(opts.repo, config, report.generated_at)
    members = membership(opts.repo)
    if opts.output is not Output.text:
        data = report.to_json()
        view = {k: data[k] for k in ("schema", "repo", "generated_at", "healthy", "nodes")}
        _render.emit_json({**view, "traces": traces, "membership": members})
        return 0
    console = _render.console()
    console.print(_table(report))
    if traces:
        _trace_lines(traces)
    for label, key in (("evicted", "evicted"), ("pending eviction", "pending_eviction")):
        if members[key]:
            _render.out(f"{label}: {', '.join(members[key])}", style="yellow")
    if members.get("unreadable"):
        _render.out(f"evictions unknown: {members['unreadable']}", style="red")
    if members["eviction_blocked"]:
        _render.out(f"eviction refused (no healthy majority): {', '.join(members['eviction_blocked'])}", style="red")
    return 0
