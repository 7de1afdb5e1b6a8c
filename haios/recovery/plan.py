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
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import audit
from ..budget import FX_FILE, UnknownCurrency, trace_cost
from ..config import load_repo
from ..config.model import PHASES, PhasePolicy, RepoConfig
from ..config.model import phase_order as order
from ..coord import Backend, Lease, open_backend
from ..detect.detectors import NodeObservation, PhaseSummary, forgotten, position, unrecorded_ends
from ..detect.observe import observe
from ..detect.phi import Estimators
from ..errors import ConfigError, HaiosError, InputError, RepoError
from ..events import make
from ..gitrepo import _git
from ..layout import APPLIED_FILE, BREAKERS_FILE, JOURNAL_DIR, MEMBERSHIP_FILE, SWINGS_FILE
from ..node.heartbeat import gossip_partitioned
from ..node.transaction import OVERRIDE_STEP, crash_window, next_transition
from ..overrides.apply import Offer, mark_spent, scan
from ..overrides.verify import applied
from ..transport import DEFAULT_PARALLEL, Transport, open_transport
from ..untrusted import in_repo, read_regular
from ..wal import WalCorruptError
from . import journal as journals
from . import membership as members
from .machine import NEEDS_A_HUMAN, TERMINAL, Event, State
from .planner import Decision, Inputs, View, decide, steps_for
from .sel import SUCCEEDED, SelStore, resource_of

PLAN_SCHEMA = "haios-plan/v1"
ACTIONABLE = frozenset({"forward", "rollback", "resume", "abort", "retry"})
UNREADABLE = "unreadable"  # the verdict of a transition whose journal, or a file it needs, cannot be read
COST_ALERT = "COST_CAP_EXCEEDED"  # SPEC §4.4: the cost cap or the swing limit halted automation
BUDGET_FILE = "policies/budget.yaml"
_CONFIG_GLOBS = ("haios.yaml", "desired/*.yaml", "policies/*.yaml", "playbooks/*.yaml", "overrides/*.yaml")


@dataclass
class TracePlan:
    trace_id: str
    g: int
    phase: str
    state: str  # the trace's state when planned (INTERRUPTED for a new one)
    verdict: str
    reason: str
    participants: list[str]
    steps: list[dict[str, Any]] = field(default_factory=list)
    wait_until: float | None = None
    resumed: bool = False  # the trace existed before this plan (a killed or earlier run)
    held_by: dict[str, Any] | None = None  # a live lease of another reconciler on the shard
    corrupt: list[str] = field(default_factory=list)  # participants whose WAL is corrupt mid-log
    alert: str = ""  # the alert a needs_human verdict raises (awaiting_ack when empty)
    spent: list[dict[str, Any]] = field(default_factory=list)  # {node, key, cost} of the phase's side effects
    cost: list[dict[str, Any]] = field(default_factory=list)  # per region: amount so far, currency, limit
    # a signed override for this trace: file, action, nonce, signers, effect (applies | continuing |
    # waiting | not applicable), why
    override: dict[str, Any] | None = None
    last_activity: float | None = None  # the transition's last sign of life on any participant (detect latency)

    @property
    def shard(self) -> str:
        return self.phase

    @property
    def actionable(self) -> bool:
        return self.verdict in ACTIONABLE

    def as_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "g": self.g,
            "phase": self.phase,
            "shard": self.shard,
            "state": self.state,
            "verdict": self.verdict,
            "reason": self.reason,
            "participants": self.participants,
            "steps": self.steps,
            "wait_until": self.wait_until,
            "resumed": self.resumed,
            "held_by": self.held_by,
            "corrupt": self.corrupt,
            "alert": self.alert,
            "spent": self.spent,
            "cost": self.cost,
            "override": self.override,
            "last_activity": self.last_activity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TracePlan:
        return cls(
            d["trace_id"],
            int(d["g"]),
            d["phase"],
            d["state"],
            d["verdict"],
            d["reason"],
            list(d["participants"]),
            list(d.get("steps") or []),
            d.get("wait_until"),
            bool(d.get("resumed")),
            d.get("held_by"),
            list(d.get("corrupt") or []),
            d.get("alert") or "",
            list(d.get("spent") or []),
            list(d.get("cost") or []),
            d.get("override"),
            d.get("last_activity"),
        )


@dataclass
class Plan:
    repo: str
    cluster: str
    created_at: float
    desired_commit: str | None
    desired_digest: str
    observed_hash: str
    active: list[str]
    reachable: list[str]
    suspended: bool = False
    traces: list[TracePlan] = field(default_factory=list)
    membership: dict[str, Any] = field(default_factory=dict)  # evicted, pending_eviction, eviction_blocked
    refused: list[str] = field(default_factory=list)  # nodes not reached: they failed verification (host key)
    overrides: list[dict[str, Any]] = field(default_factory=list)  # every file in overrides/ and its effect
    # node -> its control files that fail their integrity check: tampered with or damaged (exit 5)
    tampered: dict[str, list[str]] = field(default_factory=dict)
    # files of the repo that cannot be used (file -> its first problem): the transitions that need
    # one wait (verdict unreadable), every other goes on
    unreadable: dict[str, str] = field(default_factory=dict)
    # active members this run could not observe (refused ones are in ``refused``): node -> why, and
    # what to do about it. What they hold is unknown: the plan never calls it committed
    unreached: dict[str, dict[str, str]] = field(default_factory=dict)
    # tracked desired-state files with uncommitted edits: this plan reads them as they are on disk,
    # reconcile refuses them unless --allow-dirty
    uncommitted: list[str] = field(default_factory=list)
    # HARD_FAILED traces whose abandoned compensations no override retries yet: trace_id, g, phase,
    # abandoned [{node, key, compensator}], and the command that makes the override that would
    abandoned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def minority(self) -> bool:
        """SPEC §4.7: fewer than a majority of active members reachable."""
        return 2 * len(self.reachable) <= len(self.active) and bool(self.active)

    @property
    def pending(self) -> list[TracePlan]:
        return [t for t in self.traces if t.actionable or t.verdict == "wait"]

    @property
    def blocked(self) -> list[TracePlan]:
        return [
            t
            for t in self.traces
            if t.verdict in ("blocked", "needs_human", UNREADABLE)
            or (not t.actionable and State(t.state) in NEEDS_A_HUMAN)
        ]

    def exit_code(self) -> int:
        """SPEC §10 for a plan: 5 a node was refused (its host key is not the pinned one) or its control
        files fail their integrity check, 3 blocked (minority view, a trace needing a human, an eviction refused
        by the majority rule), 4 a shard the
        plan would act on is leased by another reconciler, 2 actions pending, 0 nothing to do."""
        if self.refused or self.tampered:
            return 5
        if self.minority or self.blocked or self.membership.get("eviction_blocked"):
            return 3
        if any(t.held_by and t.actionable for t in self.traces):
            return 4
        return 2 if self.pending else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "repo": self.repo,
            "cluster": self.cluster,
            "created_at": self.created_at,
            "desired": {"commit": self.desired_commit, "digest": self.desired_digest},
            "observed_hash": self.observed_hash,
            "active": self.active,
            "reachable": self.reachable,
            "minority": self.minority,
            "suspended": self.suspended,
            "traces": [t.as_dict() for t in self.traces],
            "membership": self.membership,
            "refused": self.refused,
            "tampered": self.tampered,
            "unreadable": self.unreadable,
            "unreached": self.unreached,
            "uncommitted": self.uncommitted,
            "abandoned": self.abandoned,
            "overrides": self.overrides,
            "exit_code": self.exit_code(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        if data.get("schema") != PLAN_SCHEMA:
            raise HaiosError(f"not a haios plan (schema {data.get('schema')!r}, expected {PLAN_SCHEMA})")
        return cls(
            data["repo"],
            data["cluster"],
            float(data["created_at"]),
            data["desired"]["commit"],
            data["desired"]["digest"],
            data["observed_hash"],
            list(data["active"]),
            list(data["reachable"]),
            bool(data.get("suspended")),
            [TracePlan.from_dict(t) for t in data["traces"]],
            dict(data.get("membership") or {}),
            list(data.get("refused") or []),
            list(data.get("overrides") or []),
            {str(k): list(v) for k, v in dict(data.get("tampered") or {}).items()},
            {str(k): str(v) for k, v in dict(data.get("unreadable") or {}).items()},
            {
                str(k): {"error": str(v.get("error", "")), "hint": str(v.get("hint", ""))}
                for k, v in dict(data.get("unreached") or {}).items()
                if isinstance(v, dict)
            },
            [str(f) for f in data.get("uncommitted") or []],
            [dict(a) for a in data.get("abandoned") or [] if isinstance(a, dict)],
        )


@dataclass
class Context:
    """What planning saw, handed on to the executor."""

    repo: Path
    config: RepoConfig
    transport: Transport
    backend: Backend
    observations: dict[str, NodeObservation]
    estimators: Estimators
    now: float
    membership: members.Membership = field(default_factory=members.Membership)
    overrides: dict[str, Offer] = field(default_factory=dict)  # valid, unused overrides by trace id
    # files that cannot be used (the plan's unreadable): the transitions that need one wait; while
    # status/membership.yaml is among them, who is evicted is unknown and every transition waits
    unreadable: dict[str, str] = field(default_factory=dict)
    # trace -> why the override that names it cannot be judged now (the supervisors or the record of
    # applied overrides cannot be read): it waits
    unjudged: dict[str, str] = field(default_factory=dict)


def desired_commit(repo: Path) -> str | None:
    """The last commit that changed the desired state (anything outside ``status/``)."""
    git = _git()
    try:
        with git.Repo(repo) as r:
            if not r.head.is_valid():
                return None
            sha = r.git.log("-1", "--format=%H", "--", ".", ":(exclude)status").strip()
            return sha or None
    except git.GitError as exc:
        raise RepoError(f"{repo}: git log failed: {' '.join(str(exc).split())}") from exc


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


def candidates(observations: dict[str, NodeObservation]) -> dict[tuple[int, str], list[str]]:
    """The transitions that need a decision, each with its participants.

    A transition is a candidate when a participant has it open, when it committed somewhere but not
    on every participant, or when a participant's WAL is damaged (torn tail, corruption).
    """
    seen: dict[tuple[int, str], dict[str, PhaseSummary]] = defaultdict(dict)
    for name, o in observations.items():
        for key, s in o.phases.items():
            seen[key][name] = s
    found: dict[tuple[int, str], set[str]] = {}
    lost = forgotten(observations)  # a node that lost its history: one doctor finding, no trace per transition
    for key, by_node in seen.items():
        participants = {p for s in by_node.values() for p in s.participants}
        ends = {s.ended for s in by_node.values()}
        if None in ends or any(s.uncompensated for s in by_node.values() if s.ended == "ABORT_PHASE"):
            found[key] = participants
        elif "COMMIT_PHASE" in ends:
            for p in participants:
                mine_s = by_node.get(p)
                obs = observations.get(p)
                if mine_s is not None and mine_s.ended == "COMMIT_PHASE":
                    continue
                if mine_s is None and obs is not None and obs.reachable and position(obs) >= order(*key):
                    continue  # committed long ago: its summary left the observation cache
                if key in lost.get(p, ()):
                    continue  # its root was deleted or re-provisioned: 'haios node rejoin' catches it up
                if mine_s is None and (obs is None or not obs.reachable):
                    continue  # not seen at all: no evidence that it missed the commit (it is checked once reachable)
                found[key] = participants
                break
    for name, o in observations.items():
        late = unrecorded_ends(o) if o.reachable else []
        if late:  # state.txt missed an end record: the transition it missed is finished on this node
            found.setdefault((late[-1].g, late[-1].phase), set()).update(late[-1].participants, {name})
        for entry in (o.state or {}).get("uncompensated") or []:
            # an aborted phase whose side effects are still owed (recorded in state.txt at ABORT)
            key = (int(entry["g"]), str(entry["phase"]))
            known = seen.get(key, {}).get(name)
            found.setdefault(key, set()).update(known.participants if known else (), {name})
        if o.wal_error is None or any(name in parts for parts in found.values()):
            continue
        mine = list(o.phases.values())
        if mine:
            latest = max(mine, key=lambda s: s.begin_lamport)
            found.setdefault((latest.g, latest.phase), set(latest.participants) | {name})
        elif o.state is not None:
            # nothing readable at all: the transition the node stands at (or would begin) needs a human
            g, ph = int(o.state.get("g") or 0), o.state.get("ph")
            found.setdefault((g, ph) if ph else next_transition(g, ph), {name})
    return {key: sorted(parts) for key, parts in sorted(found.items(), key=lambda kv: order(*kv[0]))}


def _view(ctx: Context, node: str, g: int, phase: str, summary: PhaseSummary | None) -> tuple[View, dict[str, Any]]:
    o = ctx.observations.get(node)
    if o is None:
        return View(node, "unreachable", detail="not a node of haios.yaml (or not observable)"), {}
    if not o.reachable:
        return View(node, "unreachable", detail=o.error or "unreachable"), {}
    torn = o.wal_error is not None and bool(o.wal_error.get("torn_tail"))
    if o.wal_error is not None and not torn:
        return View(node, "corrupt", detail=str(o.wal_error.get("reason", "corrupt"))), {}
    if gossip_partitioned(o.gossip, ctx.now, ctx.config.thresholds.heartbeat_window):
        return View(node, "partitioned", detail="gossip says PARTITIONED"), {}
    try:
        request: dict[str, Any] = {"op": "inspect", "g": g, "phase": phase}
        owed = [e for e in (o.state or {}).get("uncompensated") or [] if (e["g"], e["phase"]) == (g, phase)]
        if owed:
            request["from_lamport"] = owed[-1]["begin_lamport"]  # the aborted attempt that owes compensation
        elif summary is not None and summary.ended == "ABORT_PHASE" and summary.uncompensated:
            request["from_lamport"] = summary.begin_lamport  # it ended: it lies before the WAL's tail
        info = ctx.transport.call(node, request)
    except WalCorruptError as exc:
        return View(node, "corrupt", detail=exc.corruption.describe()), {}
    except HaiosError as exc:
        return View(node, "unreachable", detail=exc.message), {}
    return (
        View(
            node,
            info["status"],
            begin_ts=summary.begin_ts if summary else None,
            side_effects=tuple(info["side_effects"]),
            torn=torn or bool(info.get("torn_tail")),
            from_lamport=request.get("from_lamport"),
        ),
        info,
    )


def _trace_identity(
    ctx: Context, g: int, phase: str, infos: dict[str, dict[str, Any]]
) -> tuple[str, journals.Journal | None, int]:
    """The trace to continue (from the nodes' RECOVERY records or an open journal), or a new id;
    also how many automatic rollbacks of (g, phase) already finished (flapping, SPEC §4.5)."""
    history = journals.journals_for(ctx.repo, g, phase)
    by_id = {j.trace_id: j for j in history}
    finished_rollbacks = sum(1 for j in history if j.terminal and j.decision == "rollback")
    recorded = [r["trace_id"] for info in infos.values() for r in info.get("recovery", [])]
    for trace_id in reversed(recorded):
        j = by_id.get(trace_id)
        if j is None or not j.terminal:
            return trace_id, j, finished_rollbacks
    open_journals = [j for j in history if not j.terminal]
    if open_journals:
        return open_journals[-1].trace_id, open_journals[-1], finished_rollbacks
    begins = journals.begins_of(ctx.observations, g, phase)
    return journals.incident_trace_id(g, phase, begins, by_id), None, finished_rollbacks


def _state_from_records(infos: dict[str, dict[str, Any]], trace_id: str) -> State:
    steps = [r["step"] for info in infos.values() for r in info.get("recovery", []) if r["trace_id"] == trace_id]
    if any(s.startswith("compensate:") or s == "abort" for s in steps):
        return State.ROLLBACK
    if any(s == "commit" for s in steps):
        return State.RECONCILE
    return State.INTERRUPTED


def _region(ctx: Context, node: str) -> str | None:
    try:
        return ctx.config.cluster.node(node).region
    except KeyError:
        return None


def cost_breach(
    ctx: Context,
    trace: TracePlan,
    store: SelStore,
    upcoming: tuple[str, str, dict[str, Any]] | None = None,
    next_steps: list[dict[str, Any]] | None = None,
) -> tuple[str | None, list[dict[str, Any]]]:
    """SPEC §4.4's cost circuit breaker for a rollback: the trace's cost so far (its side effects and
    the compensations run for them, converted per region with policies/fx.yaml) — plus, as
    ``upcoming`` ``(node, what, cost)``, the run about to start — against the region's limit, and the
    create/delete swing limit of every resource still to be compensated (``next_steps``, default the
    trace's compensations). Returns the reason automation must stop (None: it may go on) and the cost
    per region so far."""
    budget = ctx.config.budget
    items: list[tuple[str | None, str, dict[str, Any] | None]] = []
    for spent in trace.spent:
        region = _region(ctx, spent["node"])
        items.append((region, f"side effect {spent['key']} on {spent['node']}", spent.get("cost")))
        entry = store.entry(spent["key"])
        if entry is not None and entry.cost:
            items.append((region, f"compensation of {spent['key']}", entry.cost))
    try:
        totals = trace_cost(items, budget, ctx.config.fx)
        cost = [t.as_dict() for t in totals.values()]
        over = [t for t in totals.values() if t.over]
        if over:
            return f"{COST_ALERT}: the trace has cost {'; '.join(str(t) for t in over)}", cost
        if upcoming is not None:
            node, what, more = upcoming
            after = trace_cost([*items, (_region(ctx, node), what, more)], budget, ctx.config.fx)
            over = [t for t in after.values() if t.over]
            if over:
                return f"{COST_ALERT}: {what} would bring the trace to {'; '.join(str(t) for t in over)}", cost
    except UnknownCurrency as exc:
        return f"the cost cap cannot be checked: {(ctx.config.blocking(FX_FILE) or [exc.message])[0]}", []
    for s in trace.steps if next_steps is None else next_steps:
        if s["action"] != "compensate":
            continue
        resource = resource_of(s.get("kind", ""), s.get("params") or {})
        deletes = store.deletes_within(resource, ctx.now, budget.swing_window)
        if deletes >= budget.swing_limit:
            return (
                f"{COST_ALERT}: {resource} was created and deleted {deletes} times within "
                f"{budget.swing_window / 60:g} min (swing limit {budget.swing_limit}); deleting it again needs a human",
                cost,
            )
    return None, cost


def _under_override(
    action: str, views: dict[str, View], inputs: Inputs, base: Decision, state: State, label: str, fresh: bool
) -> tuple[Decision | None, str, str]:
    """What a signed override makes of a trace: the decision (None: it cannot act now), its effect
    (applies, waiting, not applicable) and why."""
    corrupt = sorted(n for n, v in views.items() if v.status == "corrupt")
    if corrupt:
        why = f"the WAL of {', '.join(corrupt)} is corrupt mid-log: repair it first ('haios wal repair')"
        return None, "not applicable", why
    if base.verdict == "blocked":
        return None, "waiting", base.reason
    committed = sorted(n for n, v in views.items() if v.status == "committed")
    if action == "resume":
        if fresh and state not in (State.AWAITING_ACK, State.BLOCKED_COMPENSATOR) and base.verdict != "needs_human":
            return None, "not applicable", f"the trace is {state.value} and does not wait for a human"
        policy = inputs.policy
        lifted = replace(
            inputs,
            rollbacks_so_far=0,  # flapping: one more attempt
            policy=replace(policy, on_partial="auto") if policy.on_partial == "hold" else policy,
        )
        again = decide(views, lifted)
        if again.verdict == "needs_human":
            return None, "not applicable", f"a resume cannot help: {again.reason}"
        if again.verdict == "wait":
            return None, "waiting", again.reason
        if again.verdict == "nothing":
            # resolved meanwhile (by hand, by its executor): the override closes the trace, no step to run
            verdict, event = ("forward", Event.ROLL_FORWARD) if committed else ("rollback", Event.ROLL_BACK)
            return Decision(verdict, event, f"{label}: {again.reason}; closing the trace"), "applies", ""
        return Decision(again.verdict, again.event, f"{label}: {again.reason}", again.wait_until), "applies", ""
    if committed:
        return None, "not applicable", f"committed on {', '.join(committed)}: a committed phase cannot be undone"
    if action == "force-rollback":
        return Decision("rollback", Event.ACK_ROLLBACK, f"{label}: roll back, compensating first"), "applies", ""
    return (
        Decision("abort", Event.ACK_ABORT, f"{label}: ABORT_PHASE everywhere, side effects left uncompensated"),
        "applies",
        "",
    )


def _overridden(
    ctx: Context,
    trace_id: str,
    journal: journals.Journal | None,
    state: State,
    views: dict[str, View],
    inputs: Inputs,
    base: Decision,
    infos: dict[str, dict[str, Any]],
) -> tuple[dict[str, Any] | None, Decision]:
    """The override this trace is carrying out (its journal's grant) or may apply now (a valid,
    unused one for its id), and the decision under it."""
    grant = journal.grant if journal is not None else None
    offer = ctx.overrides.get(trace_id)
    if grant is not None:
        info = {k: grant.get(k) for k in ("file", "action", "nonce", "signers")}
    elif offer is not None:
        info = {"file": offer.file, "action": offer.action, "nonce": offer.nonce, "signers": offer.signers}
        ours = journal is not None and any(o.get("nonce") == offer.nonce for o in journal.overrides)
        used_on = sorted(
            node
            for node, got in infos.items()
            for r in got.get("recovery", [])
            if r.get("step") == OVERRIDE_STEP and (r.get("outcome") or {}).get("nonce") == offer.nonce
        )
        if used_on and not ours:
            # status/ lost the record (a revert, a restore) but the nodes' WALs keep it
            why = f"a replay: nonce {offer.nonce} was already applied on {', '.join(used_on)} (their WALs say so)"
            info.update(effect="refused", why=why)
            return info, base
    else:
        return None, base
    label = f"{info['action']} override signed by {', '.join(info['signers'] or []) or '-'}"
    decision, effect, why = _under_override(str(info["action"]), views, inputs, base, state, label, fresh=grant is None)
    if grant is not None and effect == "applies":
        effect = "continuing"
    info.update(effect=effect, why=why)
    return info, decision if decision is not None else base


def plan_transition(
    ctx: Context,
    g: int,
    phase: str,
    participants: list[str],
    *,
    resume_attempts: int | None = None,
    force_rollback: str | None = None,
) -> TracePlan:
    """Views, identity and decision for one transition (``force_rollback``: the reason replay failed)."""
    views: dict[str, View] = {}
    infos: dict[str, dict[str, Any]] = {}
    for node in participants:
        o = ctx.observations.get(node)
        summary = o.phases.get((g, phase)) if o is not None else None
        views[node], info = _view(ctx, node, g, phase, summary)
        if info:
            infos[node] = info
    trace_id, journal, rollbacks = _trace_identity(ctx, g, phase, infos)
    state = State(journal.state) if journal is not None else _state_from_records(infos, trace_id)
    policy = ctx.config.desired.phases.get(phase) or PhasePolicy()
    inputs = Inputs(
        policy=policy,
        timeout=ctx.estimators[phase].timeout(),
        now=ctx.now,
        rollbacks_so_far=rollbacks,
        max_auto_attempts=ctx.config.thresholds.max_auto_attempts,
        resume_attempts=resume_attempts if resume_attempts is not None else (journal.resume_attempts if journal else 0),
    )
    decision = decide(views, inputs)
    if force_rollback is not None:
        if any(v.status == "committed" for v in views.values()):
            decision = Decision("needs_human", Event.NEEDS_HUMAN, f"replay failed after commits: {force_rollback}")
        else:
            decision = Decision("rollback", Event.ROLL_BACK, f"replay failed validation: {force_rollback}")
    override = None
    if force_rollback is None:  # (replay failing validation is no time for a human's earlier word)
        override, decision = _overridden(ctx, trace_id, journal, state, views, inputs, decision, infos)
    granted = override is not None and override["effect"] in ("applies", "continuing")
    if state is State.ROLLBACK and decision.verdict == "forward":
        # a rollback that began (side effects compensated) must finish as a rollback
        decision = Decision("rollback", decision.event, "continuing the rollback this trace began")
    settling, decision = _settle(ctx, g, phase, participants, decision, granted)
    if state is State.AWAITING_ACK and decision.verdict in ACTIONABLE and not granted:
        decision = Decision("needs_human", None, f"awaiting a signed override ({journal.reason if journal else ''})")
    steps = steps_for(decision, views, resume_playbook=policy.resume_playbook)
    if decision.verdict in ACTIONABLE:
        steps = settling + steps  # state.txt first: what the WAL says is finished, it must say too
    trace = TracePlan(
        trace_id,
        g,
        phase,
        state.value,
        decision.verdict,
        decision.reason,
        participants,
        steps,
        decision.wait_until,
        resumed=journal is not None or state is not State.INTERRUPTED,
        corrupt=[n for n, v in views.items() if v.status == "corrupt"],
        spent=[
            {"node": n, "key": e["key"], "cost": e.get("cost")} for n in sorted(views) for e in views[n].side_effects
        ],
        override=override,
    )
    seen = [
        s.last_ts if s.last_ts is not None else s.begin_ts
        for n in participants
        if (o := ctx.observations.get(n)) is not None and (s := o.phases.get((g, phase))) is not None
    ]
    trace.last_activity = max(seen) if seen else None
    unusable = _unusable(ctx, trace)
    if unusable:  # a file it needs cannot be used: it waits, untouched, and nothing else does
        trace.verdict, trace.steps = UNREADABLE, []
        trace.reason = f"needs {'; '.join(unusable)}"
        if trace.override is not None and trace.override["effect"] in ("applies", "continuing"):
            trace.override.update(effect="waiting", why=trace.reason)
        return trace
    if trace.spent and not ctx.config.blocking(BUDGET_FILE):
        breach, trace.cost = cost_breach(ctx, trace, SelStore(ctx.repo, ctx.config.thresholds))
        # a signed override is a human's decision: the cost cap asked for exactly that
        if (
            breach is not None
            and trace.verdict == "rollback"
            and state is not State.BLOCKED_COMPENSATOR
            and not granted
        ):
            trace.verdict, trace.reason, trace.steps = "needs_human", breach, []
            trace.alert = COST_ALERT if breach.startswith(COST_ALERT) else "awaiting_ack"
    return trace


def _settle(
    ctx: Context, g: int, phase: str, participants: list[str], decision: Decision, granted: bool
) -> tuple[list[dict[str, Any]], Decision]:
    """The ``settle`` steps for participants whose state.txt missed the end record of (g, phase)
    their WAL holds, and the decision with them. A crash right after the record is finished by
    reconcile; an older or edited state.txt waits for a human (a signed override, ``granted``)."""
    steps: list[dict[str, Any]] = []
    older = []
    for node in participants:
        o = ctx.observations.get(node)
        ends = unrecorded_ends(o) if o is not None and o.reachable else []
        if not ends or (ends[-1].g, ends[-1].phase) != (g, phase):
            continue
        crash = o is not None and o.state is not None and crash_window(o.state, len(ends))
        if not crash:
            older.append(f"{node} ({len(ends)} end records past its state.txt)")
        what = "COMMIT_PHASE" if ends[-1].ended == "COMMIT_PHASE" else "ABORT_PHASE"
        steps.append(
            {
                "node": node,
                "action": "settle",
                "force": not crash,
                "ended": what,
                "detail": f"bring state.txt up to the WAL ({what} logged, state.txt not rewritten)",
            }
        )
    if not steps:
        return [], decision
    if older and not granted:
        why = (
            f"state.txt older than the WAL on {', '.join(older)}: restored in part or edited; check data/ against "
            "the WAL, then a signed resume override lets reconcile bring state.txt up to it"
        )
        return [], Decision("needs_human", Event.NEEDS_HUMAN, why)
    if decision.verdict == "nothing":
        verdict = "forward" if {s["ended"] for s in steps} == {"COMMIT_PHASE"} else "rollback"
        event = Event.ROLL_FORWARD if verdict == "forward" else Event.ROLL_BACK
        nodes = ", ".join(s["node"] for s in steps)
        decision = Decision(verdict, event, f"finished in the WAL on {nodes}, but state.txt missed it: settle it")
    return steps, decision


def _unusable(ctx: Context, trace: TracePlan) -> list[str]:
    """The files this trace needs that cannot be used now, each with its first problem: the
    membership (every trace: who takes part depends on it), the supervisors when an override names
    the trace, the playbooks its steps run, and the budget (and the rates, when a cost is in another
    currency than its region's limit) when it compensates."""
    config = ctx.config
    why = [ctx.unreadable[MEMBERSHIP_FILE]] if MEMBERSHIP_FILE in ctx.unreadable else []
    if trace.trace_id in ctx.unjudged:
        why.append(ctx.unjudged[trace.trace_id])
    compensations = [s for s in trace.steps if s["action"] == "compensate"]
    books = [s["compensator"] for s in compensations]
    books += [s["playbook"] for s in trace.steps if s["action"] == "resume" and s.get("playbook")]
    for name in books:
        why += config.playbook_blocking(str(name))
    if compensations:
        why += config.blocking(BUDGET_FILE)
        if not config.blocking(BUDGET_FILE) and config.blocking(FX_FILE):
            costs = [(_region(ctx, e["node"]), "", e.get("cost")) for e in trace.spent]
            costs += [
                (_region(ctx, s["node"]), "", pb.cost)
                for s in compensations
                if (pb := config.playbooks.get(s["compensator"])) is not None
            ]
            try:
                trace_cost(costs, config.budget, config.fx)
            except UnknownCurrency:  # a cost in another currency: the rates are needed
                why += config.blocking(FX_FILE)
        # the ledger: the breakers and the swing limit (read once per pass, in build), what ran already
        why += [ctx.unreadable[f] for f in (BREAKERS_FILE, SWINGS_FILE) if f in ctx.unreadable]
        store = SelStore(ctx.repo, config.thresholds)
        try:
            for s in compensations:
                store.entry(s["key"])
        except ConfigError as exc:
            why.append(in_repo(ctx.repo, exc.one_line()))
    validate = " (hint: restore it; 'haios validate' says what is wrong)"
    return [w + validate if w in config.unreadable.values() else w for w in dict.fromkeys(why)]


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
    parallelism: int = DEFAULT_PARALLEL,
) -> tuple[Plan, Context]:
    """Observe and decide; nothing on any node changes (``parallelism``: remote nodes observed at once)."""
    path = Path(repo)
    at = time.time() if now is None else now
    # overrides/ is judged file by file (scan); a policy file that is not valid blocks only the
    # transitions that need it (_unusable)
    config = load_repo(path, overrides=False, degraded=True)
    tr: Transport = transport or open_transport(path, config)
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
        try:  # needed by the traces that compensate, or that an override names: they wait (_unusable)
            read()
        except ConfigError as exc:
            unreadable[rel] = in_repo(path, exc.one_line())
    ctx = Context(path, config, tr, open_backend(config), observations, estimators, at, membership)
    ctx.unreadable = unreadable
    evicted = membership.evicted
    active = [n for n in config.desired.active_members() if n not in evicted]
    plan = Plan(
        str(path),
        config.cluster.name,
        at,
        desired_commit(path),
        desired_digest(path),
        observed_hash(observations),
        active,
        [n for n in active if observations.get(n) is not None and observations[n].reachable],
        suspended=config.desired.suspend,
        membership=membership.summary(),
        refused=sorted(n for n, o in observations.items() if o.refused),
        tampered={n: list(o.control_errors) for n, o in sorted(observations.items()) if o.control_errors},
        unreadable=unreadable,
        uncommitted=audit.worktree(path).dirty,
        unreached={
            n: {"error": observations[n].error or "unreachable", "hint": observations[n].hint or ""}
            for n in active
            if n in observations and not observations[n].reachable and not observations[n].refused
        },
    )
    offers = scan(config, at)
    # status/ may have lost the record (a revert, a restore); the nodes' WALs keep it
    mark_spent(offers, {node: o.override_nonces for node, o in observations.items()})
    if not plan.minority:  # SPEC §4.7: the minority view refuses overrides
        ctx.overrides = {o.trace_id: o for o in offers if o.state == "valid" and o.trace_id}
    ctx.unjudged = {o.trace_id: o.why.removeprefix("cannot be judged: ") for o in offers if o.unjudged and o.trace_id}
    leases: dict[str, Lease | None] = {}
    todo = candidates(observations)
    broken_journals: list[ConfigError] = []
    for j in journals.open_journals(path, broken_journals):
        # a trace left open by a run killed after its last node step: closed by this one
        todo.setdefault((j.g, j.phase), sorted(j.participants) or active)
    for error in broken_journals:  # a journal that cannot be read blocks its own transition, nothing else
        shard = journals.unreadable_shard(error)
        if shard is not None and shard[1] in PHASES:
            todo.setdefault(shard, active)
    for (g, phase), everyone in sorted(todo.items(), key=lambda kv: order(*kv[0])):
        participants = [n for n in everyone if n not in evicted]  # SPEC §4.7: an evicted node takes no part
        if not participants:
            continue
        try:
            trace = plan_transition(ctx, g, phase, participants)
        except ConfigError as exc:  # its journal (or a file only it needs) cannot be read: it alone waits
            trace = TracePlan(
                f"{g}-{phase.lower()}-unreadable", g, phase, "BLOCKED", UNREADABLE, exc.one_line(), participants
            )
        if trace.verdict == "nothing" and (not trace.resumed or State(trace.state) in TERMINAL):
            continue  # nothing to do, and no open trace to close
        trace.held_by = _held_by(ctx.backend, phase, at, leases) if trace.actionable else None
        plan.traces.append(trace)
    for j in journals.hard_failed(path):
        retry = _retry_abandoned(ctx, store, j)
        if isinstance(retry, TracePlan):
            retry.held_by = _held_by(ctx.backend, retry.phase, at, leases)
            plan.traces.append(retry)
        elif retry:
            plan.abandoned.append(retry)
    plan.overrides = _override_effects(path, plan, offers)
    return plan, ctx


def _retry_abandoned(ctx: Context, store: SelStore, j: journals.Journal) -> TracePlan | dict[str, Any]:
    """A HARD_FAILED trace's abandoned compensations that have not succeeded since: one more attempt
    for each under a valid signed ``resume`` for the trace (a TracePlan with verdict ``retry``), else
    what is left behind and the command that makes the override that would retry it (empty: none)."""
    owed = []
    for a in j.abandoned:
        try:
            entry = store.entry(str(a.get("key")))
        except ConfigError:  # its ledger entry cannot be read: still owed, as far as anyone can tell
            entry = None
        if entry is None or entry.state != SUCCEEDED:
            owed.append(a)
    if not owed:
        return {}
    offer = ctx.overrides.get(j.trace_id)
    spent = {str(o.get("nonce")) for o in j.overrides}
    if offer is None or offer.action != "resume" or offer.nonce in spent:
        return {
            "trace_id": j.trace_id,
            "g": j.g,
            "phase": j.phase,
            "abandoned": [{k: a.get(k) for k in ("node", "key", "compensator")} for a in owed],
            "retry": f"haios override new --trace {j.trace_id} --action resume --reason "
            "'retry the abandoned compensations'   # then sign it and merge it",
        }
    signers = ", ".join(offer.signers) or "-"
    steps = [
        {
            **a,
            "action": "compensate",
            "detail": f"{a.get('compensator')} for {a.get('kind')}: one more attempt (abandoned by HARD_FAILED)",
        }
        for a in owed
    ]
    return TracePlan(
        j.trace_id,
        j.g,
        j.phase,
        j.state,
        "retry",
        f"resume override signed by {signers}: one more attempt for the compensations HARD_FAILED abandoned "
        f"({', '.join(str(a.get('key')) for a in owed)})",
        sorted({str(a.get("node")) for a in owed}),
        steps,
        resumed=True,
        override={
            "file": offer.file,
            "action": offer.action,
            "nonce": offer.nonce,
            "signers": offer.signers,
            "effect": "applies",
            "why": "",
        },
    )


def _override_effects(repo: Path, plan: Plan, offers: list[Offer]) -> list[dict[str, Any]]:
    """Every file in overrides/ with what this plan does with it (its ``effect``)."""
    by_trace = {t.trace_id: t for t in plan.traces}
    rows = []
    for offer in offers:
        row = offer.as_dict()
        trace = by_trace.get(offer.trace_id or "")
        mine = trace.override if trace is not None and trace.override is not None else None
        if mine is not None and mine["nonce"] == offer.nonce:
            row["effect"], row["why"] = mine["effect"], mine["why"] or row["why"]
        elif offer.state == "applied" and trace is not None:
            row["effect"] = "refused"  # the trace needs a human again: this approval was used up
        elif offer.state != "valid":
            row["effect"] = offer.state
        elif plan.minority:
            row["effect"], row["why"] = (
                "refused",
                "minority view: overrides are refused until a majority of the members is reachable",
            )
        elif mine is not None:
            row["effect"] = "not applicable"
            row["why"] = f"the trace is carrying out an earlier override (nonce {mine['nonce']})"
        else:
            journal = journals.find(repo, offer.trace_id or "")
            row["effect"] = "not applicable"
            row["why"] = (
                f"no trace {offer.trace_id} in {JOURNAL_DIR}"
                if journal is None
                else f"trace {offer.trace_id} has ended ({journal.state})"
            )
        rows.append(row)
    return rows


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


def render_markdown(plan: Plan) -> str:
    """The plan as a pull-request comment."""
    code = plan.exit_code()
    head = {0: "nothing to do", 2: "changes pending", 3: "blocked: needs a human", 4: "locked by another reconciler"}
    lines = [
        f"### haios plan for `{plan.cluster}` — {head.get(code, str(code))}",
        "",
        f"Desired state `{(plan.desired_commit or 'uncommitted')[:12]}`, observed `{plan.observed_hash[:19]}`, "
        f"{len(plan.reachable)} of {len(plan.active)} active members reachable"
        + (" — **minority view: nothing will change**" if plan.minority else "")
        + (" — **suspended: plan only**" if plan.suspended else ""),
        "",
    ]
    if plan.uncommitted:
        lines += [
            f"**Uncommitted edits** to {', '.join(f'`{f}`' for f in plan.uncommitted)}: this plan reads them as "
            "they are; reconcile refuses them unless `--allow-dirty`",
            "",
        ]
    for problem in plan.unreadable.values():
        lines += [f"**Cannot use** {problem}: the transitions that need it wait", ""]
    m = plan.membership
    for label, key in (("Evicted", "evicted"), ("Pending eviction", "pending_eviction")):
        if m.get(key):
            lines += [f"{label}: {', '.join(f'`{n}`' for n in m[key])}", ""]
    if m.get("eviction_blocked"):
        lines += [
            f"**Eviction refused (no healthy majority would remain): {', '.join(m['eviction_blocked'])} — page a human**",
            "",
        ]
    shown = [o for o in plan.overrides if o.get("effect") != "applied"]
    if shown:
        lines += ["| override | action | trace | signatures | effect |", "|---|---|---|---|---|"]
        for o in shown:
            why = f": {o['why']}".replace("|", "\\|") if o.get("why") else ""
            lines.append(
                f"| `{o['file']}` | {o.get('action') or '-'} | `{o.get('trace_id') or '-'}` | "
                f"{o.get('have', 0)} of {o.get('need', 1)} | **{o['effect']}**{why} |"
            )
        lines.append("")
    for a in plan.abandoned:
        what = ", ".join(f"`{x['key']}` on `{x['node']}`" for x in a["abandoned"])
        lines += [
            f"**HARD_FAILED** `{a['trace_id']}` (g={a['g']} {a['phase']}) left uncompensated: {what}; "
            f"a signed resume retries them: `{a['retry'].split('   #')[0]}`",
            "",
        ]
    for lost in plan.unreached.values():
        lines += [f"**Not reached:** {lost['error']}" + (f" — {lost['hint']}" if lost["hint"] else ""), ""]
    if not plan.traces:
        settled = settled_line(plan)
        lines.append(settled[0].upper() + settled[1:] + ".")
        return "\n".join(lines) + "\n"
    lines += ["| transition | trace | decision | why |", "|---|---|---|---|"]
    for t in plan.traces:
        why = t.reason.replace("|", "\\|")
        lines.append(f"| g={t.g} {t.phase} | `{t.trace_id}` | **{t.verdict}** ({t.state}) | {why} |")
    for t in plan.traces:
        if not t.steps:
            continue
        lines += ["", f"<details><summary>g={t.g} {t.phase}: {len(t.steps)} steps</summary>", ""]
        for i, s in enumerate(t.steps, 1):
            key = f" `{s['key']}`" if s.get("key") else ""
            lines.append(f"{i}. `{s['node']}` **{s['action']}**{key}: {s['detail']}")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
