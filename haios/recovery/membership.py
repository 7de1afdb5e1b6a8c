"""Isolated nodes and eviction (SPEC §4.7): ``status/membership.yaml`` in the desired-state repo.

A member is *isolated* while the reconciler cannot reach it or its gossip says PARTITIONED. Isolated
for longer than ``partition.eviction_ttl`` (30 min), it is *pending eviction* (alert
``pending_eviction``); after a further ``partition.eviction_grace`` (15 min) it is evicted — but only
if the members left healthy are still a majority of the membership. Otherwise the eviction is
refused and the report pages a human (alert ``eviction_blocked``): evicting into a minority would
let a minority decide for the cluster. ``minority_evictions_total`` counts evictions carried out.

Admission control: at most one eviction per partition window (``partition.window``), the member
isolated longest first; another that is due meanwhile is *deferred* (a finding, not an alert) and
evicted on a later run if it is still isolated. The majority is always counted over the whole
active membership, evicted members included, so an eviction never lowers the bar for the next one.

An evicted node takes part in no transition and no recovery trace (its half-done work is left as it
is) until ``haios node rejoin`` brings it back. Healing alone does not end an eviction.

The file is the memory between cron runs: when each isolation began, when it became pending, when
the node was evicted, and every alert raised (each once per isolation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.model import RepoConfig
from ..config.yamlload import load_status
from ..controlfile import dump_mapping
from ..detect.detectors import NodeObservation
from ..errors import ConfigError
from ..fsutil import atomic_write, makedirs_durable
from ..layout import MEMBERSHIP_FILE
from ..node.heartbeat import gossip_partitioned
from ..timefmt import parse_utc, utc
from ..untrusted import is_number

SCHEMA = "haios-membership/v1"
PARTITIONS_KEPT = 500  # ended isolations remembered (the metric's history)


def isolation(obs: NodeObservation | None, now: float, window: float) -> tuple[str, float | None] | None:
    """Why a node counts as isolated and, when the node says, since when (None: it is not). Its
    gossip counts only when rewritten within ``window`` (the heartbeat window): a stale file is no verdict."""
    if obs is None or not obs.reachable:
        return (obs.error if obs is not None and obs.error else "unreachable"), None
    gossip = obs.gossip or {}
    if gossip_partitioned(gossip, now, window):
        since = gossip.get("since")
        try:
            at = parse_utc(since) if isinstance(since, str) else None
        except ValueError:
            at = None
        return "its gossip says PARTITIONED", at
    return None


@dataclass
class Event:
    """Something this assessment changed (a commit line, and an alert when ``alert`` is set)."""

    node: str
    what: str  # isolated | pending_eviction | evicted | eviction_blocked | healed
    message: str
    alert: str | None = None


@dataclass
class Membership:
    """The memory of ``status/membership.yaml`` and what an assessment concluded."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    minority_evictions_total: int = 0
    events: list[Event] = field(default_factory=list)
    # isolations that ended (node, since, healed_at, seconds), newest last: partition_duration_seconds
    partitions: list[dict[str, Any]] = field(default_factory=list)
    last_eviction_at: float | None = None  # admission control: one eviction per partition window

    @property
    def evicted(self) -> set[str]:
        return {n for n, entry in self.nodes.items() if entry.get("evicted_at") is not None}

    @property
    def pending(self) -> list[str]:
        return sorted(
            n for n, e in self.nodes.items() if e.get("pending_since") is not None and e.get("evicted_at") is None
        )

    @property
    def deferred(self) -> list[str]:
        return sorted(
            n for n, e in self.nodes.items() if e.get("deferred_since") is not None and e.get("evicted_at") is None
        )

    @property
    def blocked(self) -> list[str]:
        return sorted(
            n for n, e in self.nodes.items() if e.get("blocked_since") is not None and e.get("evicted_at") is None
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "minority_evictions_total": self.minority_evictions_total,
            "last_eviction_at": self.last_eviction_at,
            "nodes": {n: self.nodes[n] for n in sorted(self.nodes)},
            "alerts": self.alerts,
            "partitions": self.partitions,
        }

    def due(self, t_ttl: float, t_grace: float, window: float = 0.0) -> float | None:
        """When the next isolated node becomes pending or is evicted, if nothing heals first
        (``window``: the partition window a deferred eviction waits after the last one)."""
        times = []
        for e in self.nodes.values():
            if e.get("evicted_at") is not None or e.get("blocked_since") is not None:
                continue
            if e.get("deferred_since") is not None and self.last_eviction_at is not None:
                times.append(self.last_eviction_at + window)
            elif e.get("pending_since") is not None:
                times.append(float(e["pending_since"]) + t_grace)
            else:
                times.append(float(e["isolated_since"]) + t_ttl)
        return min(times) if times else None

    def summary(self) -> dict[str, Any]:
        return {
            "evicted": sorted(self.evicted),
            "pending_eviction": self.pending,
            "eviction_blocked": self.blocked,
            "eviction_deferred": self.deferred,
            "minority_evictions_total": self.minority_evictions_total,
        }

    def _event(self, now: float, event: Event) -> None:
        self.events.append(event)
        if event.alert:
            self.alerts.append({"at": utc(now), "alert": event.alert, "node": event.node, "message": event.message})


def load(repo: Path) -> Membership:
    path = repo / MEMBERSHIP_FILE
    data = load_status(path, "readable", MEMBERSHIP_FILE)
    if data is None:
        return Membership()
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(f"{path}: not a haios membership file (schema {SCHEMA})", hint="restore it from git")
    wrong = _shape_problem(data)
    if wrong:
        raise ConfigError(f"{path}: not a haios membership file: {wrong}", hint="restore it from git")
    return Membership(
        {str(n): dict(e) for n, e in (data.get("nodes") or {}).items()},
        list(data.get("alerts") or []),
        int(data.get("minority_evictions_total") or 0),
        partitions=list(data.get("partitions") or []),
        last_eviction_at=float(data["last_eviction_at"]) if data.get("last_eviction_at") is not None else None,
    )


def _shape_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the fields a run computes with (None: nothing)."""
    nodes = data.get("nodes") or {}
    if not isinstance(nodes, dict):
        return "nodes is not a mapping"
    for name, entry in nodes.items():
        if not isinstance(entry, dict) or not is_number(entry.get("isolated_since")):
            return f"nodes.{name} has no isolated_since time"
        for key in ("pending_since", "evicted_at", "blocked_since", "deferred_since"):
            if entry.get(key) is not None and not is_number(entry[key]):
                return f"nodes.{name}.{key} is not a time"
    for key in ("alerts", "partitions"):
        items = data.get(key) or []
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            return f"{key} is not a list of mappings"
    if data.get("last_eviction_at") is not None and not is_number(data["last_eviction_at"]):
        return "last_eviction_at is not a time"
    total = data.get("minority_evictions_total") or 0
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        return "minority_evictions_total is not a count"
    return None


def save(repo: Path, membership: Membership) -> None:
    data = dump_mapping(membership.as_dict())
    path = repo / MEMBERSHIP_FILE
    if path.exists() and path.read_bytes() == data:
        return
    makedirs_durable(path.parent)
    atomic_write(path, data)


def assess(repo: Path, config: RepoConfig, observations: dict[str, NodeObservation], now: float) -> Membership:
    """Carry the membership memory forward to ``now`` (nothing is written: see :func:`save`)."""
    t = config.thresholds
    m = load(repo)
    members = config.desired.active_members()
    isolated: dict[str, tuple[str, float | None]] = {}
    for name in members:
        found = isolation(observations.get(name), now, t.heartbeat_window)
        if found is not None:
            isolated[name] = found
    for name in sorted(set(m.nodes) - set(members)):
        del m.nodes[name]  # no longer an active member (draining, decommissioned): nothing to evict or rejoin
    due: list[str] = []
    for name in members:
        entry = m.nodes.get(name)
        if entry is not None and entry.get("evicted_at") is not None:
            continue  # evicted: only 'haios node rejoin' brings it back
        if name not in isolated:
            if entry is not None:
                del m.nodes[name]
                since = float(entry["isolated_since"])
                m.partitions.append({"node": name, "since": since, "healed_at": now, "seconds": round(now - since, 3)})
                del m.partitions[:-PARTITIONS_KEPT]
                m._event(now, Event(name, "healed", f"{name} is reachable and not partitioned again"))
            continue
        why, claimed = isolated[name]
        if entry is None:
            since = min(now, claimed) if claimed is not None else now
            entry = m.nodes[name] = {"isolated_since": since, "isolated_utc": utc(since), "why": why}
            m._event(now, Event(name, "isolated", f"{name} isolated: {why}"))
        since = float(entry["isolated_since"])
        if now - since < t.eviction_ttl:
            continue
        if entry.get("pending_since") is None:
            entry["pending_since"] = now
            entry["evict_after_utc"] = utc(now + t.eviction_grace)
            m._event(
                now,
                Event(
                    name,
                    "pending_eviction",
                    f"{name} isolated for {(now - since) / 60:.0f} min ({why}); evicted after a "
                    f"{t.eviction_grace / 60:.0f}-min grace unless it comes back",
                    alert="pending_eviction",
                ),
            )
            continue
        if now - float(entry["pending_since"]) >= t.eviction_grace:
            due.append(name)
    # the member isolated longest first: the one admission control lets through
    for name in sorted(due, key=lambda n: (float(m.nodes[n]["isolated_since"]), n)):
        _evict_or_refuse(m, name, members, isolated, now, t.partition_window)
    return m


def _evict_or_refuse(
    m: Membership,
    name: str,
    members: list[str],
    isolated: dict[str, tuple[str, float | None]],
    now: float,
    window: float,
) -> None:
    """Evict ``name`` (its grace is over) if a healthy majority of the whole membership remains and
    no member was evicted within the partition window; else refuse (a page) or defer (a finding)."""
    entry = m.nodes[name]
    since = float(entry["isolated_since"])
    evicted = m.evicted
    healthy = [n for n in members if n not in isolated and n not in evicted]
    if 2 * len(healthy) <= len(members):
        if entry.get("blocked_since") is None:
            entry["blocked_since"] = now
            m._event(
                now,
                Event(
                    name,
                    "eviction_blocked",
                    f"{name} cannot be evicted: only {len(healthy)} of {len(members)} members are healthy, not "
                    "a majority; a human must decide (page)",
                    alert="eviction_blocked",
                ),
            )
        return
    entry.pop("blocked_since", None)
    last = m.last_eviction_at
    if last is not None and now - last < window:
        if entry.get("deferred_since") is None:
            entry["deferred_since"] = now
            m._event(
                now,
                Event(
                    name,
                    "eviction_deferred",
                    f"{name} is due for eviction, but a member was evicted {now - last:.0f} s ago: at most one "
                    f"eviction per partition window ({window:.0f} s); it is evicted on a later run if still isolated",
                ),
            )
        return
    entry.pop("deferred_since", None)
    entry.update(evicted_at=now, evicted_utc=utc(now))
    m.last_eviction_at = now
    m.minority_evictions_total += 1
    m._event(
        now,
        Event(
            name,
            "evicted",
            f"{name} evicted after {(now - since) / 60:.0f} min isolated; {len(healthy)} of "
            f"{len(members)} members healthy remain (a majority)",
            alert="node_evicted",
        ),
    )


def participants(repo: Path, config: RepoConfig) -> list[str]:
    """The members a new transition includes: active in the desired state and not evicted."""
    evicted = load(repo).evicted
    return [n for n in config.desired.active_members() if n not in evicted]


def rejoined(repo: Path, node: str, now: float, how: str) -> Membership:
    """Forget ``node``'s eviction (after a successful catch-up) and save."""
    m = load(repo)
    if node not in m.evicted:
        raise ConfigError(f"{node} is not evicted (status/membership.yaml)", hint="nothing to rejoin")
    del m.nodes[node]
    m._event(now, Event(node, "rejoined", f"{node} rejoined: {how}", alert="node_rejoined"))
    save(repo, m)
    return m
