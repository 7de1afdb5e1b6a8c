"""``haios report --html``: what happened to each node and phase over time, as one self-contained
HTML file (inline SVG and CSS, a few lines of inline script, nothing fetched from the network).

One swimlane per node; each attempt at a ``(g, phase)`` is a bar from its BEGIN_PHASE to its end,
coloured by how it ended (committed, aborted, still open); recovery steps (the nodes' RECOVERY
records) and detections (the trace journals) are marked on the lanes; hovering shows the details
with the trace ids. A summary gives time to detect and time to recover over the window.

Everything is read, nothing is changed: the nodes' WALs through the transport's local view (a
mirror for SSH nodes) and the journals in ``status/recoveries/``.
"""

from __future__ import annotations

import html
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import load_repo
from .config.model import PHASES
from .errors import HaiosError, WalCorruptError
from .fsutil import atomic_write
from .layout import JOURNAL_DIR
from .recovery import journal as journals
from .timefmt import parse_utc, utc
from .transport import open_transport
from .wal import RecordType, read_records

COLOURS = {"committed": "#2e7d32", "aborted": "#c62828", "open": "#f9a825"}


@dataclass
class Bar:
    node: str
    g: int
    phase: str
    start: float
    end: float | None  # None: still open (a killed executor, a phase in progress)
    outcome: str  # committed | aborted | open
    trace_id: str
    prepared: bool = False


@dataclass
class Mark:
    node: str | None  # None: the whole cluster (a detection)
    at: float
    kind: str  # recovery | detection
    trace_id: str
    text: str


@dataclass
class Timeline:
    cluster: str
    since: float
    until: float
    nodes: list[str]
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    detect: list[float] = field(default_factory=list)  # seconds, per trace detected in the window
    recover: list[float] = field(default_factory=list)  # seconds from detection to the trace's end
    unreadable: dict[str, str] = field(default_factory=dict)  # node -> why its WAL could not be read


def _node_records(root: Path, node: str, since: float, timeline: Timeline) -> None:
    open_bars: dict[tuple[int, str], Bar] = {}
    try:
        for r in read_records(root / "wal"):
            p = r.payload
            ts = float(p.get("ts") or 0.0)
            key = (int(p.get("g", -1)), str(p.get("phase", "")))
            if r.type is RecordType.BEGIN_PHASE:
                bar = Bar(node, key[0], key[1], ts, None, "open", str(p.get("trace_id", "")))
                open_bars[key] = bar
                timeline.bars.append(bar)
            elif r.type is RecordType.PREPARE and key in open_bars:
                open_bars[key].prepared = True
            elif r.type in (RecordType.COMMIT_PHASE, RecordType.ABORT_PHASE) and key in open_bars:
                bar = open_bars.pop(key)
                bar.end = ts
                bar.outcome = "committed" if r.type is RecordType.COMMIT_PHASE else "aborted"
            elif r.type is RecordType.RECOVERY and ts >= since:
                text = f"{p.get('step')}: {p.get('outcome')}"
                timeline.marks.append(Mark(node, ts, "recovery", str(p.get("trace_id", "")), text))
    except WalCorruptError as exc:
        timeline.unreadable[node] = exc.corruption.describe()
    timeline.bars[:] = [b for b in timeline.bars if b.node != node or b.end is None or b.end >= since]


def build(repo: Path | str, *, since: float, now: float | None = None) -> Timeline:
    """Read the cluster's history from ``since`` to ``now``."""
    path = Path(repo)
    until = time.time() if now is None else now
    config = load_repo(path, overrides=False, degraded=True)
    nodes = [n.name for n in config.cluster.nodes]
    timeline = Timeline(config.cluster.name, since, until, nodes)
    transport = open_transport(path, config)
    try:
        for node in nodes:
            try:
                root = transport.local_view(node)
            except HaiosError as exc:
                timeline.unreadable[node] = exc.message
                continue
            _node_records(root, node, since, timeline)
    finally:
        transport.close()
    directory = path / JOURNAL_DIR
    for jpath in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        j = journals.load(jpath)
        d = j.detection or {}
        detected = d.get("detected_at")
        if detected is None or not since <= float(detected) <= until:
            continue
        detected = float(detected)
        if d.get("last_activity") is not None:
            timeline.detect.append(max(0.0, detected - float(d["last_activity"])))
        text = f"g={j.g} {j.phase} detected: {j.state} ({j.decision or 'undecided'}) {j.reason}"
        timeline.marks.append(Mark(None, detected, "detection", j.trace_id, text))
        if j.closed_at:
            timeline.recover.append(max(0.0, parse_utc(j.closed_at) - detected))
    return timeline


def _stats(values: list[float]) -> str:
    if not values:
        return "none in this window"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return (
        f"{len(values)} trace{'' if len(values) == 1 else 's'}: median {_duration(statistics.median(ordered))}, "
        f"p95 {_duration(p95)}, max {_duration(ordered[-1])}"
    )


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(timeline: Timeline) -> str:
    """The timeline as one HTML document that needs nothing but a browser."""
    e = html.escape
    lane_h, top, left, width = 34, 40, 110, 1100
    seen = [b.start for b in timeline.bars] + [m.at for m in timeline.marks]
    ends = [b.end if b.end is not None else timeline.until for b in timeline.bars] + [m.at for m in timeline.marks]
    # zoom to what happened in the window (a quiet cluster's window would squeeze it into a sliver)
    start = max(timeline.since, min(seen)) if seen else timeline.since
    end = min(timeline.until, max(ends)) if ends else timeline.until
    pad = max(end - start, 1.0) * 0.02
    start, end = start - pad, end + pad
    span = max(end - start, 1e-3)

    def x(t: float) -> float:
        return left + (min(max(t, start), end) - start) / span * width

    height = top + lane_h * len(timeline.nodes) + 30
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="{left + width + 50}" height="{height}" '
        f'role="img" aria-label="phases per node over time">'
    ]
    for i in range(6):  # the time axis
        t = start + span * i / 5
        svg.append(
            f'<line class="tick" x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{height - 24}"/>'
            f'<text class="axis" x="{x(t):.1f}" y="{top - 10}">{e(utc(t)[11:19])}</text>'
        )
    for row, node in enumerate(timeline.nodes):
        y = top + row * lane_h
        svg.append(f'<g class="lane" data-node="{e(node)}">')
        svg.append(f'<rect class="lane-bg" x="{left}" y="{y}" width="{width}" height="{lane_h - 4}"/>')
        svg.append(f'<text class="node" x="8" y="{y + lane_h / 2 + 2}">{e(node)}</text>')
        for b in (b for b in timeline.bars if b.node == node):
            x0 = x(b.start)
            x1 = x(b.end if b.end is not None else end)
            detail = (
                f"{node} g={b.g} {b.phase}: {b.outcome}{' (PREPAREd)' if b.prepared else ''}\n"
                f"{utc(b.start)} → {utc(b.end) if b.end is not None else 'open'}\ntrace {b.trace_id}"
            )
            svg.append(
                f'<rect class="bar {b.outcome}" data-g="{b.g}" data-phase="{b.phase}" data-trace="{e(b.trace_id)}" '
                f'x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 2):.1f}" height="{lane_h - 12}" '
                f'fill="{COLOURS[b.outcome]}" data-detail="{e(detail)}"><title>{e(detail)}</title></rect>'
            )
        for m in (m for m in timeline.marks if m.node == node):
            detail = f"{node} {utc(m.at)}\n{m.text}\ntrace {m.trace_id}"
            svg.append(
                f'<circle class="mark recovery" data-trace="{e(m.trace_id)}" cx="{x(m.at):.1f}" cy="{y + lane_h / 2 - 2}" '
                f'r="4" data-detail="{e(detail)}"><title>{e(detail)}</title></circle>'
            )
        svg.append("</g>")
    for m in (m for m in timeline.marks if m.node is None):
        detail = f"{utc(m.at)}\n{m.text}\ntrace {m.trace_id}"
        svg.append(
            f'<line class="mark detection" data-trace="{e(m.trace_id)}" x1="{x(m.at):.1f}" y1="{top - 4}" '
            f'x2="{x(m.at):.1f}" y2="{height - 24}" data-detail="{e(detail)}"><title>{e(detail)}</title></line>'
        )
    svg.append("</svg>")
    legend = " ".join(f'<span class="key"><i style="background:{c}"></i>{k}</span>' for k, c in COLOURS.items())
    unreadable = "".join(f"<li>{e(n)}: {e(why)}</li>" for n, why in sorted(timeline.unreadable.items()))
    phases = ", ".join(PHASES)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>haios timeline — {e(timeline.cluster)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.sub {{ color: #666; margin-bottom: 16px; }}
.summary td {{ padding: 2px 12px 2px 0; }}
.key {{ margin-right: 14px; }} .key i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; }}
svg text.node {{ font-size: 12px; font-weight: 600; }}
svg text.axis {{ font-size: 11px; fill: #666; text-anchor: middle; }}
svg line.tick {{ stroke: #eee; }}
svg rect.lane-bg {{ fill: #fafafa; stroke: #e0e0e0; }}
svg rect.bar {{ opacity: .85; }} svg rect.bar:hover, svg .mark:hover {{ opacity: 1; stroke: #000; }}
svg circle.recovery {{ fill: #1565c0; stroke: #fff; }}
svg line.detection {{ stroke: #6a1b9a; stroke-width: 2; stroke-dasharray: 4 3; }}
svg .highlight {{ stroke: #000 !important; stroke-width: 2; opacity: 1; }}
#detail {{ white-space: pre; font: 12px ui-monospace, monospace; background: #f5f5f5; padding: 8px; min-height: 3em; }}
</style>
</head>
<body>
<h1>haios timeline — cluster {e(timeline.cluster)}</h1>
<div class="sub">{e(utc(timeline.since))} to {e(utc(timeline.until))}; phases {e(phases)}; haios {e(__version__)}</div>
<table class="summary">
<tr><td>time to detect</td><td id="ttd">{e(_stats(timeline.detect))}</td></tr>
<tr><td>time to recover</td><td id="ttr">{e(_stats(timeline.recover))}</td></tr>
<tr><td>phase runs</td><td id="runs">{len(timeline.bars)} ({sum(1 for b in timeline.bars if b.outcome == "aborted")} aborted, {sum(1 for b in timeline.bars if b.outcome == "open")} open)</td></tr>
</table>
<p>{legend}<span class="key"><i style="background:#1565c0;border-radius:6px"></i>recovery step</span><span class="key"><i style="background:#6a1b9a"></i>detection</span></p>
{"".join(svg)}
<div id="detail">hover over a bar or a mark for its details; every part of the same trace is outlined</div>
{f"<p>Not read:</p><ul>{unreadable}</ul>" if unreadable else ""}
<script>
(function () {{
  var detail = document.getElementById("detail");
  var items = document.querySelectorAll("[data-detail]");
  function mark(trace, on) {{
    if (!trace) return;
    document.querySelectorAll('[data-trace="' + CSS.escape(trace) + '"]').forEach(function (el) {{
      el.classList.toggle("highlight", on);
    }});
  }}
  items.forEach(function (el) {{
    el.addEventListener("mouseenter", function () {{
      detail.textContent = el.getAttribute("data-detail");
      mark(el.getAttribute("data-trace"), true);
    }});
    el.addEventListener("mouseleave", function () {{ mark(el.getAttribute("data-trace"), false); }});
  }});
  document.body.setAttribute("data-ready", String(items.length));
}})();
</script>
</body>
</html>
"""


def write(repo: Path | str, target: Path | str, *, since: float, now: float | None = None) -> Timeline:
    """Build the timeline and write it to ``target`` atomically."""
    timeline = build(repo, since=since, now=now)
    atomic_write(Path(target), render(timeline).encode("utf-8"))
    return timeline


def summary(timeline: Timeline) -> dict[str, Any]:
    return {
        "cluster": timeline.cluster,
        "since": utc(timeline.since),
        "until": utc(timeline.until),
        "nodes": timeline.nodes,
        "phase_runs": len(timeline.bars),
        "detections": sum(1 for m in timeline.marks if m.kind == "detection"),
        "recovery_steps": sum(1 for m in timeline.marks if m.kind == "recovery"),
        "unreadable": timeline.unreadable,
    }
