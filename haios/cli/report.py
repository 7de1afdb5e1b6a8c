"""``haios report --html FILE``: the cluster's timeline as one self-contained HTML file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..config import parse_duration
from ..errors import UsageError
from ..timeline import summary, write
from . import _render
from ._options import Output, OutputOpt, RepoOpt, resolve


def report(
    ctx: typer.Context,
    html_file: Annotated[
        Path,
        typer.Option("--html", help="Write the report to this HTML file (self-contained).", show_default=False),
    ],
    since: Annotated[str, typer.Option("--since", help="How far back: 30m, 24h, 7d ...")] = "24h",
    repo: RepoOpt = None,
    output: OutputOpt = None,
) -> int:
    """A timeline of the cluster: a swimlane per node with every phase run as a bar, failures,
    detections and recovery steps marked, hover details with trace ids, time to detect and to recover."""
    opts = resolve(ctx, repo=repo, output=output)
    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    now = time.time()
    timeline = write(opts.repo, html_file, since=now - window, now=now)
    info = summary(timeline)
    if opts.output is not Output.text:
        _render.emit_json({"schema": "haios-report/v1", "file": str(html_file), **info})
        return 0
    _render.out(
        f"wrote {html_file}: since {info['since']}: nodes {len(info['nodes'])}, phase runs {info['phase_runs']}, "
        f"detections {info['detections']}, recovery steps {info['recovery_steps']}"
    )
    for node, why in sorted(info["unreadable"].items()):
        _render.out(f"    {node}: not read: {why}", style="yellow")
    return 0
