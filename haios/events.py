"""Versioned events (``--output ndjson``): one JSON object per line, each a thing that happened or
was decided, so that log shippers and scripts can follow a run as it goes.

Every event has the envelope of ``schemas/event.schema.json``::

    {"v": 1, "type": "recovery.step", "ts": 1795747528.4, "trace_id": "2-analyze-c727a9747233", ...}

``v`` changes only when a field changes meaning or disappears; new fields and new types may appear
within a version. The types:

=================  ==========================================================================
``detection``      a half-done transition found (plan, reconcile): g, phase, state, verdict, why
``plan.step``      a step a plan would run: node, action, key, detail
``override``       an override file and what this run does with it
``plan``           the end of a plan: exit code, observed hash
``trace.state``    a trace changed state: from, to, why
``recovery.step``  a recovery step finished on a node: node, action, outcome, timings
``alert``          an alert raised: alert, message
``trace``          a trace's outcome in this run: before, after, exit code contribution
``policy``         the compiled desired state pushed to a node: node, outcome, digest (or error)
``commit``         the audit commit of a run: commit, pushed_to
``run``            the end of a reconcile run: exit code, next_due
``finding``        a doctor finding: kind, severity, nodes, summary, fix
``doctor``         the end of a doctor pass: healthy, exit code
``phase_transition.finished``  recovery committed or aborted a transition: outcome, nodes, vector clock
``agent.down``     a member's heartbeat is lost (once, when its ``agent_down`` alert fires): age
``phase_ready``    the barrier moved: every member finished (g, phase)
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

VERSION = 1
TYPES = (
    "detection",
    "plan.step",
    "override",
    "plan",
    "trace.state",
    "recovery.step",
    "alert",
    "trace",
    "policy",
    "commit",
    "run",
    "finding",
    "doctor",
    "phase_transition.finished",
    "agent.down",
    "phase_ready",
    "vclock.pruned",
    "forensic_mismatch",
)
FAILED_PARTIAL = "FAILED_PARTIAL"
"""What a tripped transition is marked (SPEC §3): in its trace's journal and its ``detection`` event."""
Sink = Callable[[dict[str, Any]], None]
log = logging.getLogger("haios.events")


def make(kind: str, trace_id: str | None = None, /, *, ts: float | None = None, **fields: Any) -> dict[str, Any]:
    """One event: the envelope first, then ``fields`` (None values left out)."""
    if kind not in TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    event: dict[str, Any] = {"v": VERSION, "type": kind, "ts": time.time() if ts is None else ts, "trace_id": trace_id}
    event.update({k: v for k, v in fields.items() if v is not None})
    return event


def logged(sink: Sink | None) -> Sink:
    """``sink``, and a log line with the trace id for every event (``-v`` shows them on stderr)."""

    def emit(event: dict[str, Any]) -> None:
        if log.isEnabledFor(logging.INFO):
            what = " ".join(f"{k}={event[k]}" for k in ("node", "action", "outcome", "alert", "to") if k in event)
            log.info("trace=%s %s %s", event.get("trace_id") or "-", event["type"], what)
        if sink is not None:
            sink(event)

    return emit
