"""After a reconcile run's traces: publish the barrier, save membership, sync replica placement,
raise and resolve alerts, rewrite ``status/status.yaml``, then one git commit of everything that
changed (nothing changed: nothing committed) and, when asked, the push."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import alerts
from ..audit import Recorder
from ..config.model import phase_order as order
from ..config.validate import pruned_clocks
from ..controlfile import dump_mapping
from ..coord.base import Barrier
from ..errors import EXIT_LOCKED, BarrierMoved, ConfigError, HaiosError
from ..events import Sink, make
from ..fsutil import atomic_write, makedirs_durable
from ..layout import (
    ALERTS_DIR,
    APPLIED_FILE,
    JOURNAL_DIR,
    MEMBERSHIP_FILE,
    PLACEMENT_FILE,
    POLICY_FILE,
    SEL_DIR,
    STATUS_FILE,
    TOMBSTONES_FILE,
)
from ..recovery import clockgc
from ..recovery import journal as journals
from ..recovery import membership as members
from ..recovery.machine import State
from ..recovery.model import Context, RunResult, TraceOutcome
from ..recovery.nodeops import node_state
from ..replication import placement
from ..timefmt import parse_utc
from . import policy as policies


def status_file(ctx: Context) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for spec in ctx.config.cluster.nodes:
        try:
            body = node_state(ctx.transport, spec.name)
        except HaiosError:
            body = None
        nodes[spec.name] = {"g": body.get("g"), "ph": body.get("ph")} if body else {"unreachable": True}
    open_traces = (
        sorted(
            j.trace_id for p in sorted((ctx.repo / JOURNAL_DIR).glob("*.yaml")) if not (j := journals.load(p)).terminal
        )
        if (ctx.repo / JOURNAL_DIR).is_dir()
        else []
    )
    return {"cluster": ctx.config.cluster.name, "nodes": nodes, "open_traces": open_traces}


def write_status(ctx: Context) -> None:
    data = dump_mapping(status_file(ctx))
    path = ctx.repo / STATUS_FILE
    if path.exists() and path.read_bytes() == data:
        return
    makedirs_durable(path.parent)
    atomic_write(path, data)


def _publish_barrier(
    path: Path, ctx: Context, holder: str, now: float, moved: bool, seen: Barrier
) -> dict[str, Any] | None:
    """Move the backend's barrier up to the last transition every member has committed, when every
    member can be read and none is in the middle of a phase (an unseen one might be behind); returns
    the barrier as it then stands. ``moved``: this run changed nodes, so their state is read again;
    ``seen``: the barrier as this run read it."""
    positions = []
    for name in members.participants(path, ctx.config):
        obs = ctx.observations.get(name)
        if obs is None or not obs.reachable:
            return seen.as_dict()
        try:
            state = node_state(ctx.transport, name) if moved else obs.state
        except HaiosError:
            return seen.as_dict()
        if state is None or state.get("status") != "READY" or state.get("uncompensated"):
            return seen.as_dict()
        positions.append((int(state.get("g") or 0), state.get("ph")))
    if not positions:
        return seen.as_dict()
    g, phase = min(positions, key=lambda p: order(*p))
    if phase is None or order(g, phase) <= order(seen.g, seen.phase):
        return seen.as_dict()
    try:
        return ctx.backend.advance_barrier(seen, g, phase, holder, now).as_dict()
    except BarrierMoved:
        return ctx.backend.barrier().as_dict()  # another reconciler published first


def _agents(ctx: Context, now: float) -> alerts.Agents:
    """Whose agent is down, by the heartbeats this run read: a member whose last heartbeat is older
    than the heartbeat window. A member not read (unreachable) or that never beat is left as it was."""
    window = ctx.config.thresholds.heartbeat_window
    down: dict[str, str] = {}
    seen: dict[str, dict[str, Any]] = {}
    unseen: set[str] = set()
    try:
        names = members.participants(ctx.repo, ctx.config)
    except ConfigError:  # status/membership.yaml cannot be read: its own finding; the active members then
        names = ctx.config.desired.active_members()
    for name in names:
        o = ctx.observations.get(name)
        beat = o.heartbeat if o is not None and o.reachable else None
        try:
            age = now - parse_utc(str(beat["wall_time"])) if beat is not None else None
        except (KeyError, TypeError, ValueError):
            age = None
        if age is None:
            unseen.add(name)
            continue
        seen[name] = {"last_heartbeat": beat["wall_time"] if beat else None, "age_s": round(age, 1)}
        if age > window:
            down[name] = (
                f"{name}: last heartbeat {age:.0f} s ago (window {window:.0f} s): its agent is down or cannot write"
            )
    return alerts.Agents(down, frozenset(unseen), seen)


def _message(
    outcomes: list[TraceOutcome],
    events: list[members.Event] | None = None,
    raised: list[alerts.Change] | None = None,
    placement: list[str] | None = None,
    pushed: list[str] | None = None,
) -> tuple[str, list[str]]:
    verbs = {"forward": "rolled forward", "rollback": "rolled back", "resume": "resumed", "abort": "aborted"}
    done = [o for o in outcomes if o.recorded]
    parts = [
        (verbs.get(o.verdict, o.verdict) if o.after in (State.CLEAN_EXIT.value, State.ABORTED.value) else o.after)
        + f" g={o.g} {o.phase}"
        + (f" ({o.override['action']} override)" if o.override else "")
        for o in done
    ]
    parts += [f"{e.what.replace('_', ' ')} {e.node}" for e in events or [] if e.what != "isolated"]
    if not parts and raised:
        parts = [f"alert {c.alert.alert} {c.state}" for c in raised]
    if not parts and placement:
        parts = ["replica placement"]
    if not parts and pushed:
        parts = [f"policy pushed to {', '.join(pushed)}"]
    subject = "haios reconcile: " + ("; ".join(parts) if parts else "recorded trace states")
    if len(subject) > 100:
        subject = f"haios reconcile: {len(done)} traces ({', '.join(sorted({o.after for o in done}))})"
    body = []
    for o in done:
        token = f", token {o.token}" if o.token is not None else ""
        body.append(f"g={o.g} {o.phase} (trace {o.trace_id}{token}): {o.before} -> {o.after}")
        if o.override:
            body.append(f"  override: {o.override['action']} from {o.override['file']} (nonce {o.override['nonce']})")
        if o.reason:
            body.append(f"  why: {o.reason}")
        body += [f"  - {line}" for line in o.done]
        if o.note:
            body.append(f"  note: {o.note}")
    body += [f"membership: {e.message}" for e in events or []]
    body += [f"alert {c.alert.alert} ({c.alert.severity}) {c.state}: {c.alert.message}" for c in raised or []]
    body += placement or []
    return subject, body


def finish(
    ctx: Context,
    result: RunResult,
    holder: str,
    clock: Callable[[], float],
    emit: Sink,
    recorder: Recorder,
    *,
    push: bool = False,
    remote: str | None = None,
) -> None:
    """Everything a run does after its traces, into ``result``: barrier, membership, placement,
    alerts, the status file, the audit commit and the push."""
    path, plan = ctx.repo, result.plan
    changed = [o for o in result.outcomes if o.recorded]
    # a fenced or locked-out run publishes nothing; nor does one that cannot tell who is evicted
    ready: list[str] = []
    if not any(o.code == EXIT_LOCKED for o in result.outcomes) and MEMBERSHIP_FILE not in ctx.unreadable:
        before = ctx.backend.barrier()
        result.barrier = _publish_barrier(path, ctx, holder, clock(), bool(changed), before)
        if result.barrier is not None and (result.barrier["g"], result.barrier["phase"]) != (before.g, before.phase):
            g, phase = result.barrier["g"], result.barrier["phase"]
            emit(make("phase_ready", g=g, phase=phase, previous={"g": before.g, "phase": before.phase}))
            ready.append(f"barrier: phase_ready(g={g}) at {phase}: every member finished it")
    paths = [JOURNAL_DIR, STATUS_FILE, SEL_DIR, MEMBERSHIP_FILE, str(Path(APPLIED_FILE).parent), ALERTS_DIR]
    events = ctx.membership.events
    if events:
        members.save(path, ctx.membership)
    if MEMBERSHIP_FILE not in ctx.unreadable and (
        ctx.config.cluster.replication.mode != "off" or (path / PLACEMENT_FILE).exists()
    ):
        participants = members.participants(path, ctx.config)
        placed = placement.sync(path, ctx.config, participants, ctx.transport, clock(), parallelism=ctx.parallelism)
        result.placement = placed.lines()  # an origin still not told is said on every run...
        if placed.saved:  # ...but committed only when the placement file changes
            paths.append(PLACEMENT_FILE)
    gc = _vclock_gc(ctx, result, holder, clock, emit)
    if gc is not None and gc.saved:
        paths.append(TOMBSTONES_FILE)
    agents = _agents(ctx, clock())
    raised = alerts.sync(path, clock(), agents)  # after the journals and membership: what holds now
    result.alerts = [c.as_dict() for c in raised]
    for c in raised:
        emit(make("alert", c.alert.trace_id, node=c.alert.node, **c.as_dict()))
        if c.alert.alert == "agent_down" and c.state == "firing" and c.alert.node is not None:
            emit(make("agent.down", node=c.alert.node, why=c.alert.message, **agents.seen.get(c.alert.node, {})))
    pushed = [p["node"] for p in result.policy if p.get("outcome") == "pushed"]
    if pushed:
        paths.append(POLICY_FILE)
    if changed or events or raised or PLACEMENT_FILE in paths or TOMBSTONES_FILE in paths or pushed:
        write_status(ctx)
        subject, body = _message(result.outcomes, events, raised, result.placement, pushed)
        body += policies.lines(result) + ready + (gc.lines() if gc is not None else [])
        traces = [
            {
                "trace_id": o.trace_id,
                "result": o.after,
                "fencing_token": o.token or "-",
                "override": o.override["nonce"] if o.override else None,
            }
            for o in changed
        ]
        result.commit = recorder.commit_run(paths, subject, body, traces, plan.observed_hash)
    push_audit(result, recorder, push, remote)
    if result.commit is not None:
        emit(make("commit", commit=result.commit, pushed_to=result.pushed_to, traces=[o.trace_id for o in changed]))


def _vclock_gc(
    ctx: Context, result: RunResult, holder: str, clock: Callable[[], float], emit: Sink
) -> clockgc.GcResult | None:
    """Prune the clock entries of nodes decommissioned longer than the retention (SPEC §7), and give
    the members the policy that names them at once. Not in a minority view or a fenced run: every
    active member must be seen to have seen a node's last event."""
    if result.plan.minority or any(o.code == EXIT_LOCKED for o in result.outcomes):
        return None
    gc = clockgc.collect(ctx, clock, holder)
    result.vclock = gc.as_dict() if (gc.pruned or gc.merged or gc.waiting or gc.error) else {}
    for entry in gc.pruned:
        emit(make("vclock.pruned", node=entry["node"], last_counter=entry["last_counter"], source=entry["source"]))
    if gc.saved:
        ctx.config = replace(ctx.config, vclock_pruned=pruned_clocks(ctx.repo))
        owed = [{"node": n} for n in policies.members(ctx)]
        result.policy += policies.push(ctx, replace(result.plan, policy=owed), clock, emit, holder)
    return gc


def push_audit(result: RunResult, recorder: Recorder, push: bool, remote: str | None) -> None:
    if push and result.commit is not None:
        result.pushed_to = recorder.push(remote)
    elif push:  # nothing new: still push what an earlier, rejected push left behind
        owed = recorder.unpushed(remote)
        if owed is None or owed > 0:
            result.pushed_to = recorder.push(remote)
            result.pushed_owed = owed or 0
