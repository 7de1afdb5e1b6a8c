"""``haios plan``: observe the cluster and decide, for every half-done transition, what reconcile
would do — without changing anything (the observation cache in ``status/observed/`` aside).

A plan records the desired-state commit, a digest of the configuration it was made from and a hash
of the observed state, so that ``haios reconcile --plan FILE`` can refuse to execute a plan that no
longer describes the cluster.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ..audit import Recorder
from ..config.model import PHASES
from ..config.model import phase_order as order
from ..coord import Backend, Lease
from ..detect.detectors import NodeObservation
from ..detect.phi import Estimators
from ..errors import ConfigError, InputError
from ..events import FAILED_PARTIAL, make
from ..layout import APPLIED_FILE, BREAKERS_FILE, MEMBERSHIP_FILE, SWINGS_FILE
from ..overrides.apply import mark_spent, scan
from ..overrides.verify import applied
from ..recovery import journal as journals
from ..recovery import membership as members
from ..recovery.assess import assess, candidates
from ..recovery.grant import override_effects, retry_abandoned
from ..recovery.machine import TERMINAL, State
from ..recovery.model import Context, Plan, TracePlan, Verdict
from ..recovery.sel import SelStore
from ..transport import DEFAULT_PARALLEL, Transport
from ..untrusted import in_repo, read_regular
from . import policy as policies
from .context import OpsContext, open_context
from .observe import observe

_CONFIG_GLOBS = ("haios.yaml", "desired/*.yaml", "policies/*.yaml", "playbooks/*.yaml", "overrides/*.yaml")


def desired_digest(repo: Path) -> str:
    """SHA-256 over the configuration files as they are on disk (committed or not)."""
    h = hashlib.sha256()
    paths = sorted({p for pattern in _CONFIG_GLOBS for p in repo.glob(pattern)} | set(repo.glob("schemas/*.json")))
    for path in paths:
        try:
            data = read_regular(path, "desired", within=repo) or b""
        except InputError as exc:  # a FIFO, a device, a huge file: its name and why stand for its content
            data = f"unreadable: {exc.reason}".encode()
        h.update(str(path.relative_to(repo)).encode() + b"\0" + data + b"\0")
    return "sha256:" + h.hexdigest()


def observed_hash(observations: dict[str, NodeObservation]) -> str:
    """A hash of what the decisions depend on (not of heartbeats or timestamps)."""
    canon = []
    for name in sorted(observations):
        o = observations[name]
        canon.append(
            {
                "node": name,
                "reachable": o.reachable,
                "state": {k: (o.state or {}).get(k) for k in ("g", "ph", "status")},
                "partition": (o.gossip or {}).get("partition_status"),
                "wal_error": None if o.wal_error is None else (o.wal_error.get("segment"), o.wal_error.get("offset")),
                "last_lamport": o.last_lamport,
                "open": sorted([s.g, s.phase, s.prepared] for s in o.phases.values() if s.ended is None),
            }
        )
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _held_by(backend: Backend, shard: str, now: float, cache: dict[str, Lease | None]) -> dict[str, Any] | None:
    if shard not in cache:
        cache[shard] = backend.read(shard)
    lease = cache[shard]
    if lease is None or not lease.live(now):
        return None
    return {"holder": lease.holder, "trace_id": lease.trace_id, "token": lease.token, "expires": lease.expires}


def build(
    repo: Path | str,
    *,
    now: float | None = None,
    transport: Transport | None = None,
    backend: Backend | None = None,
    recorder: Recorder | None = None,
    parallelism: int = DEFAULT_PARALLEL,
) -> tuple[Plan, Context]:
    """Observe and decide; nothing on any node changes (``parallelism``: remote nodes observed at
    once). A transport this opens is closed by the caller (:func:`haios.ops.context.close_transport`
    on ``ctx.transport``) when it is done with the context."""
    opened = open_context(repo, transport=transport, backend=backend, recorder=recorder)
    return plan_from(opened, time.time() if now is None else now, parallelism)


def plan_from(opened: OpsContext, at: float, parallelism: int = DEFAULT_PARALLEL) -> tuple[Plan, Context]:
    """The plan at ``at`` for an opened repo, and the context the executor carries it out with."""
    ctx = _observed(opened, at, parallelism)
    plan = _frame(ctx, opened.recorder)
    offers = scan(ctx.config, at)
    # status/ may have lost the record (a revert, a restore); the nodes' WALs keep it
    mark_spent(offers, {node: o.override_nonces for node, o in ctx.observations.items()})
    if not plan.minority:  # SPEC §4.7: the minority view refuses overrides
        ctx.overrides = {o.trace_id: o for o in offers if o.state == "valid" and o.trace_id}
    ctx.unjudged = {o.trace_id: o.why.removeprefix("cannot be judged: ") for o in offers if o.unjudged and o.trace_id}
    _decide(ctx, plan)
    plan.overrides = override_effects(ctx.repo, plan, offers)
    # a data schema that cannot be read would be missing from the compiled policy: nothing is pushed
    if not plan.minority and not any(f.startswith("schemas/") for f in ctx.config.unreadable):
        plan.policy = policies.owed(ctx, ctx.config.compile_policy()["digest"])
    return plan, ctx


def _observed(opened: OpsContext, at: float, parallelism: int) -> Context:
    """Observe every node, feed the estimators, assess membership, and note each file of the ledger
    that cannot be read (the transitions that need it wait)."""
    path, config, tr = opened.repo, opened.config, opened.transport
    names = sorted({n.name for n in config.cluster.nodes} & set(tr.nodes()))
    remote = any(n.transport == "ssh" for n in config.cluster.nodes)
    observations, durations = observe(path, tr, names, parallelism=parallelism if remote else 1)
    for spec in config.cluster.nodes:
        if spec.name not in observations:
            observations[spec.name] = NodeObservation(
                spec.name, reachable=False, error=f"{spec.name}: no transport reaches it ({spec.transport})"
            )
    estimators = Estimators.from_thresholds(config.thresholds)
    estimators.feed(durations)
    unreadable = dict(config.unreadable)
    try:
        membership = members.assess(path, config, observations, at)
    except ConfigError as exc:  # who is evicted is unknown: every transition waits for the file
        membership = members.Membership()
        unreadable[MEMBERSHIP_FILE] = in_repo(path, exc.one_line())
    store = SelStore(path, config.thresholds)
    for rel, read in (
        (BREAKERS_FILE, store.breakers),
        (SWINGS_FILE, store.swings),
        (APPLIED_FILE, lambda: applied(path)),
    ):
        try:  # needed by the traces that compensate, or that an override names: they wait
            read()
        except ConfigError as exc:
            unreadable[rel] = in_repo(path, exc.one_line())
    ctx = Context(path, config, tr, opened.backend, observations, estimators, at, membership, parallelism=parallelism)
    ctx.unreadable = unreadable
    return ctx


def _frame(ctx: Context, recorder: Recorder) -> Plan:
    """The plan without its traces: what it was made from and who was seen."""
    path, observations = ctx.repo, ctx.observations
    active = [n for n in ctx.config.desired.active_members() if n not in ctx.membership.evicted]
    return Plan(
        str(path),
        ctx.config.cluster.name,
        ctx.now,
        recorder.desired_commit(),
        desired_digest(path),
        observed_hash(observations),
        active,
        [n for n in active if observations.get(n) is not None and observations[n].reachable],
        suspended=ctx.config.desired.suspend,
        membership=ctx.membership.summary(),
        refused=sorted(n for n, o in observations.items() if o.refused),
        tampered={n: list(o.control_errors) for n, o in sorted(observations.items()) if o.control_errors},
        unreadable=ctx.unreadable,
        uncommitted=recorder.dirty(),
        unreached={
            n: {"error": observations[n].error or "unreachable", "hint": observations[n].hint or ""}
            for n in active
            if n in observations and not observations[n].reachable and not observations[n].refused
        },
    )


def _decide(ctx: Context, plan: Plan) -> None:
    """A trace for every transition that needs a decision, and the retries HARD_FAILED traces are granted."""
    path, at, evicted = ctx.repo, ctx.now, ctx.membership.evicted
    leases: dict[str, Lease | None] = {}
    todo = candidates(ctx.observations)
    broken_journals: list[ConfigError] = []
    for j in journals.open_journals(path, broken_journals):
        # a trace left open by a run killed after its last node step: closed by this one
        todo.setdefault((j.g, j.phase), sorted(j.participants) or plan.active)
    for error in broken_journals:  # a journal that cannot be read blocks its own transition, nothing else
        shard = journals.unreadable_shard(error)
        if shard is not None and shard[1] in PHASES:
            todo.setdefault(shard, plan.active)
    for (g, phase), everyone in sorted(todo.items(), key=lambda kv: order(*kv[0])):
        participants = [n for n in everyone if n not in evicted]  # SPEC §4.7: an evicted node takes no part
        if not participants:
            continue
        try:
            trace = assess(ctx, g, phase, participants)
        except ConfigError as exc:  # its journal (or a file only it needs) cannot be read: it alone waits
            trace = TracePlan(
                f"{g}-{phase.lower()}-unreadable", g, phase, "BLOCKED", Verdict.UNREADABLE, exc.one_line(), participants
            )
        if trace.verdict is Verdict.NOTHING and (not trace.resumed or State(trace.state) in TERMINAL):
            continue  # nothing to do, and no open trace to close
        trace.held_by = _held_by(ctx.backend, phase, at, leases) if trace.actionable else None
        plan.traces.append(trace)
    store = SelStore(path, ctx.config.thresholds)
    for j in journals.hard_failed(path):
        retry = retry_abandoned(ctx, store, j)
        if isinstance(retry, TracePlan):
            retry.held_by = _held_by(ctx.backend, retry.phase, at, leases)
            plan.traces.append(retry)
        elif retry:
            plan.abandoned.append(retry)


def plan_events(plan: Plan, *, steps: bool = True) -> list[dict[str, Any]]:
    """The plan as events (:mod:`haios.events`): each transition found, each step it would run
    (``steps``), each override file's effect, and the plan's end with its exit code."""
    at = plan.created_at
    out = []
    for t in plan.traces:
        out.append(
            make(
                "detection",
                t.trace_id,
                ts=at,
                g=t.g,
                phase=t.phase,
                state=t.state,
                verdict=t.verdict,
                why=t.reason,
                participants=t.participants,
                last_activity=t.last_activity,
                transition=None if t.verdict is Verdict.NOTHING else FAILED_PARTIAL,
            )
        )
        for i, s in enumerate(t.steps if steps else [], 1):
            fields = {k: s.get(k) for k in ("node", "action", "key", "detail")}
            out.append(make("plan.step", t.trace_id, ts=at, g=t.g, phase=t.phase, step=i, **fields))
    for o in plan.overrides:
        out.append(
            make(
                "override",
                o.get("trace_id"),
                ts=at,
                file=o["file"],
                action=o.get("action"),
                effect=o["effect"],
                why=o.get("why") or None,
            )
        )
    if steps:
        out.append(
            make("plan", ts=at, exit_code=plan.exit_code(), observed_hash=plan.observed_hash, minority=plan.minority)
        )
    return out


def settled_line(plan: Plan) -> str:
    """What a plan without traces may honestly say (a clause): all is settled only when every member was seen."""
    seen = len(plan.reachable)
    if not plan.unreached and not plan.refused:
        return "every transition is committed or rolled back on all its participants"
    if seen == 0:
        return f"no active member could be observed (0 of {len(plan.active)}): nothing is known of any transition"
    return (
        f"every transition the {seen} observed member{'s' if seen != 1 else ''} took part in is committed or rolled "
        f"back; nothing is known of {', '.join(sorted({*plan.unreached, *plan.refused}))}"
    )
