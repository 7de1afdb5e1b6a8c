"""Alerts as data: ``status/alerts/<id>.yaml`` in the desired-state repo, changed only when an
alert's state changes, so a cron job that runs every five minutes raises each alert once.

Two kinds:

*conditions* fire while something holds and resolve when it stops holding:
    ``awaiting_ack`` and ``COST_CAP_EXCEEDED`` (a trace in AWAITING_ACK), ``sel_compensator_failed``
    (a trace in BLOCKED_COMPENSATOR), ``pending_eviction``, ``eviction_blocked`` and ``node_evicted``
    (a member's eviction state), ``agent_down`` (a member's heartbeat older than the heartbeat window,
    as this run read it);
*events* happened once and stay ``raised``:
    ``compensator_timeout`` (a trace became HARD_FAILED, leaving side effects uncompensated),
    ``forensic_mismatch`` (a log that came back under a tombstoned name disagrees with its
    tombstone: :func:`raise_event`, by ``haios wal import`` or ``haios node rejoin``).

Each file holds the alert's id, name, severity, scope (trace or node), message, state (firing,
resolved, raised) and times. The alerts come from what ``status/`` already records (trace journals,
``status/membership.yaml``), so :func:`sync` can run after any reconcile; it returns what changed,
which the audit commit and the event stream report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config.yamlload import load_status
from .controlfile import dump_mapping
from .errors import ConfigError, HaiosError
from .fsutil import atomic_write, makedirs_durable
from .layout import ALERTS_DIR, JOURNAL_DIR
from .recovery import journal as journals
from .recovery import membership as members
from .recovery.machine import State
from .timefmt import utc

SCHEMA = "haios-alert/v1"
SEVERITY = {
    "awaiting_ack": "page",
    "COST_CAP_EXCEEDED": "page",
    "sel_compensator_failed": "page",
    "compensator_timeout": "page",
    "eviction_blocked": "page",
    "pending_eviction": "warning",
    "node_evicted": "warning",
    "agent_down": "warning",
    "forensic_mismatch": "page",
}
RESOLVED_KEPT = 30 * 86400.0  # resolved alerts are removed this long after they resolved


@dataclass(frozen=True)
class Alert:
    id: str
    alert: str
    message: str
    trace_id: str | None = None
    node: str | None = None
    event: bool = False  # happened once (raised), rather than a condition (firing until resolved)

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.alert, "warning")


@dataclass(frozen=True)
class Change:
    """One alert that changed state in this sync: raised (firing or an event) or resolved."""

    alert: Alert
    state: str  # firing | resolved | raised

    def as_dict(self) -> dict[str, Any]:
        a = self.alert
        return {"id": a.id, "alert": a.alert, "severity": a.severity, "state": self.state, "message": a.message}


def _id(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "--".join(parts))


def _last_alert(j: journals.Journal, names: tuple[str, ...]) -> dict[str, Any] | None:
    return next((a for a in reversed(j.alerts) if a["alert"] in names), None)


_MEMBERSHIP_ALERTS = frozenset({"pending_eviction", "eviction_blocked", "node_evicted"})
_UNKNOWN_MEMBERSHIP = ""  # in ``unknown``: status/membership.yaml cannot be read


def current(repo: Path, unknown: set[str] | None = None) -> dict[str, Alert]:
    """Every alert that holds now (conditions) or has happened (events), by id. ``unknown`` collects
    what cannot be told now: the trace id of each journal that cannot be read, and ``""`` when the
    membership record cannot be read (the alerts they raised neither hold nor resolve)."""
    found: dict[str, Alert] = {}
    unknown = set() if unknown is None else unknown
    directory = repo / JOURNAL_DIR
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            j = journals.load(path)
        except ConfigError:
            unknown.add(path.name.removesuffix(".yaml"))  # doctor reports an unreadable journal
            continue
        state = State(j.state)
        if state is State.AWAITING_ACK:
            last = _last_alert(j, ("awaiting_ack", "COST_CAP_EXCEEDED"))
            name = last["alert"] if last else "awaiting_ack"
            message = last["message"] if last else j.reason
            found[_id(name, j.trace_id)] = Alert(_id(name, j.trace_id), name, message, trace_id=j.trace_id)
        elif state is State.BLOCKED_COMPENSATOR:
            last = _last_alert(j, ("sel_compensator_failed",))
            message = last["message"] if last else j.reason
            key = _id("sel_compensator_failed", j.trace_id)
            found[key] = Alert(key, "sel_compensator_failed", message, trace_id=j.trace_id)
        elif state is State.HARD_FAILED:
            last = _last_alert(j, ("compensator_timeout",))
            if last is not None:
                key = _id("compensator_timeout", j.trace_id)
                found[key] = Alert(key, "compensator_timeout", last["message"], trace_id=j.trace_id, event=True)
    try:
        m = members.load(repo)
    except ConfigError:
        m = members.Membership()
        unknown.add(_UNKNOWN_MEMBERSHIP)
    for node in m.pending:
        key = _id("pending_eviction", node)
        found[key] = Alert(key, "pending_eviction", f"{node} isolated long enough to be evicted soon", node=node)
    for node in m.blocked:
        key = _id("eviction_blocked", node)
        why = f"{node} cannot be evicted: the healthy members would not be a majority; a human must decide"
        found[key] = Alert(key, "eviction_blocked", why, node=node)
    for node in sorted(m.evicted):
        key = _id("node_evicted", node)
        found[key] = Alert(
            key, "node_evicted", f"{node} was evicted; 'haios node rejoin {node}' brings it back", node=node
        )
    return found


def _load(path: Path) -> dict[str, Any] | None:
    """A recorded alert, or None when the file is not one (unreadable, hostile, another schema)."""
    try:
        data = load_status(path, "an alert record", ALERTS_DIR)
    except HaiosError:
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def recorded(repo: Path) -> dict[str, dict[str, Any]]:
    """What ``status/alerts/`` holds, by id."""
    directory = repo / ALERTS_DIR
    out = {}
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        data = _load(path)
        if data is not None:
            out[str(data["id"])] = data
    return out


def _write(repo: Path, alert: Alert, state: str, since: float, now: float) -> None:
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "id": alert.id,
        "alert": alert.alert,
        "severity": alert.severity,
        "state": state,
        "trace_id": alert.trace_id,
        "node": alert.node,
        "message": alert.message,
        "since": utc(since),
        "since_ts": since,
        "resolved_at": utc(now) if state == "resolved" else None,
        "resolved_ts": now if state == "resolved" else None,
    }
    makedirs_durable(repo / ALERTS_DIR)
    atomic_write(repo / ALERTS_DIR / f"{alert.id}.yaml", dump_mapping(body))


def raise_event(
    repo: Path, name: str, message: str, now: float, *, node: str | None = None, key: str = ""
) -> Change | None:
    """Record an event alert that no status file implies (``forensic_mismatch``): raised once per
    ``key``; None when it was raised before."""
    alert = Alert(_id(name, *(p for p in (node, key) if p)), name, message, node=node, event=True)
    if alert.id in recorded(repo):
        return None
    _write(repo, alert, "raised", now, now)
    return Change(alert, "raised")


@dataclass(frozen=True)
class Agents:
    """What a run saw of the members' heartbeats: ``down`` (node: why) and the nodes it could not
    read (``unseen``: their ``agent_down`` alert neither fires nor resolves)."""

    down: dict[str, str]
    unseen: frozenset[str]
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # node: last_heartbeat, age_s (for events)


def sync(repo: Path, now: float, agents: Agents | None = None) -> list[Change]:
    """Bring ``status/alerts/`` up to date at ``now``; returns the changes (none: nothing written).
    Without ``agents`` the ``agent_down`` alerts stay as they are."""
    unknown: set[str] = set()
    holding = current(repo, unknown)
    for node, why in sorted((agents.down if agents else {}).items()):
        holding[_id("agent_down", node)] = Alert(_id("agent_down", node), "agent_down", why, node=node)
    unknown.update(f"agent:{n}" for n in (agents.unseen if agents else ()))
    stored = recorded(repo)
    changes: list[Change] = []
    for key, alert in sorted(holding.items()):
        before = stored.get(key)
        if alert.event:
            if before is None:
                _write(repo, alert, "raised", now, now)
                changes.append(Change(alert, "raised"))
        elif before is None or before.get("state") != "firing":
            _write(repo, alert, "firing", now, now)  # a new alert, or one that resolved and came back
            changes.append(Change(alert, "firing"))
    for key, data in sorted(stored.items()):
        if key in holding:
            continue
        if (
            data.get("trace_id") in unknown
            or (_UNKNOWN_MEMBERSHIP in unknown and data.get("alert") in _MEMBERSHIP_ALERTS)
            or (data.get("alert") == "agent_down" and (agents is None or f"agent:{data.get('node')}" in unknown))
        ):
            continue  # what raised it cannot be read now: it is neither resolved nor raised again
        if data.get("state") == "firing":
            gone = Alert(
                key, str(data["alert"]), str(data.get("message") or ""), data.get("trace_id"), data.get("node")
            )
            _write(repo, gone, "resolved", float(data.get("since_ts") or now), now)
            changes.append(Change(gone, "resolved"))
        elif data.get("state") == "resolved" and now - float(data.get("resolved_ts") or now) > RESOLVED_KEPT:
            (repo / ALERTS_DIR / f"{key}.yaml").unlink()  # git keeps its history
    return changes
