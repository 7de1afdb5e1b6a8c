"""The recovery core's data: what a plan decided (:class:`Plan`, :class:`TracePlan`), what a run did
(:class:`RunResult`, :class:`TraceOutcome`), with their JSON, and the words they are made of — the
:class:`Verdict` of a transition and the :class:`StepAction` of each node operation.

:class:`Context` is what planning saw (configuration, observations, estimators, transport, backend),
handed from :mod:`haios.ops` to the core; the core never opens any of it itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_LOCKED, EXIT_OK, EXIT_PENDING, EXIT_VERIFICATION, HaiosError
from ..transport.base import DEFAULT_PARALLEL
from . import membership as members
from .machine import NEEDS_A_HUMAN, State

if TYPE_CHECKING:
    from ..config.model import RepoConfig
    from ..coord.base import Backend
    from ..detect.detectors import NodeObservation
    from ..detect.phi import Estimators
    from ..overrides.apply import Offer
    from ..transport.base import Transport

PLAN_SCHEMA = "haios-plan/v1"


class Verdict(StrEnum):
    """What the decision rule made of a transition (SPEC §4.2)."""

    NOTHING = "nothing"  # settled: nothing to do (an open trace is closed)
    FORWARD = "forward"  # replay and commit on every participant
    ROLLBACK = "rollback"  # compensate, then restore the BEGIN snapshot and ABORT_PHASE
    RESUME = "resume"  # run the phase's resume hook (on_partial: resume)
    ABORT = "abort"  # a signed abort: ABORT_PHASE everywhere, nothing compensated
    RETRY = "retry"  # a signed resume on a HARD_FAILED trace: its abandoned compensations once more
    WAIT = "wait"  # not yet: a Φ timeout, a back-off
    BLOCKED = "blocked"  # a participant is unreachable or PARTITIONED
    NEEDS_HUMAN = "needs_human"  # a signed override is needed
    UNREADABLE = "unreadable"  # its journal, or a file it needs, cannot be read: it waits, untouched


ACTIONABLE = frozenset({Verdict.FORWARD, Verdict.ROLLBACK, Verdict.RESUME, Verdict.ABORT, Verdict.RETRY})
STOPPED = frozenset({Verdict.BLOCKED, Verdict.NEEDS_HUMAN, Verdict.UNREADABLE})
"""Verdicts that leave a transition for a human (or a heal): exit 3."""


class StepAction(StrEnum):
    """One node operation of a plan step (the ``action`` of a step)."""

    REPAIR = "repair"  # cut a torn WAL tail
    SETTLE = "settle"  # bring state.txt up to an end record the WAL holds
    FORWARD = "forward"  # replay the intents, COMMIT_PHASE
    RESUME = "resume"  # run the phase's resume hook
    COMPENSATE = "compensate"  # run a compensator under the ledger
    ROLLBACK = "rollback"  # restore data/ from the BEGIN snapshot, ABORT_PHASE


@dataclass
class TracePlan:
    trace_id: str
    g: int
    phase: str
    state: str  # the trace's state when planned (INTERRUPTED for a new one)
    verdict: Verdict
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
            "verdict": self.verdict.value,
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
            Verdict(d["verdict"]),
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
    # members whose policy file is not the compiled desired state: node, have (its digest), want
    policy: list[dict[str, Any]] = field(default_factory=list)

    @property
    def minority(self) -> bool:
        """SPEC §4.7: fewer than a majority of active members reachable."""
        return 2 * len(self.reachable) <= len(self.active) and bool(self.active)

    @property
    def pending(self) -> list[TracePlan]:
        return [t for t in self.traces if t.actionable or t.verdict is Verdict.WAIT]

    @property
    def blocked(self) -> list[TracePlan]:
        return [
            t for t in self.traces if t.verdict in STOPPED or (not t.actionable and State(t.state) in NEEDS_A_HUMAN)
        ]

    def exit_code(self) -> int:
        """SPEC §10 for a plan: 5 a node was refused (its host key is not the pinned one) or its control
        files fail their integrity check, 3 blocked (minority view, a trace needing a human, an eviction refused
        by the majority rule), 4 a shard the
        plan would act on is leased by another reconciler, 2 actions pending (a policy to push too), 0
        nothing to do."""
        if self.refused or self.tampered:
            return EXIT_VERIFICATION
        if self.minority or self.blocked or self.membership.get("eviction_blocked"):
            return EXIT_BLOCKED
        if any(t.held_by and t.actionable for t in self.traces):
            return EXIT_LOCKED
        return EXIT_PENDING if self.pending or self.policy else EXIT_OK

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
            "policy": self.policy,
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
            [dict(p) for p in data.get("policy") or [] if isinstance(p, dict)],
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
    parallelism: int = DEFAULT_PARALLEL  # remote nodes worked on at once (--max-parallel): observed, told, pushed to


@dataclass
class TraceOutcome:
    trace_id: str
    g: int
    phase: str
    verdict: Verdict
    before: str
    after: str
    token: int | None = None
    steps: int = 0
    note: str = ""
    code: int = 0  # this trace's contribution to the exit code
    recorded: bool = False  # its journal changed in this run
    reason: str = ""  # why the trace was decided as it was
    done: list[str] = field(default_factory=list)  # the journal's steps of this run, in words
    due: float | None = None  # when waiting work of this trace becomes due (a back-off, a timeout)
    cost: list[dict[str, Any]] = field(default_factory=list)  # per region, so far
    override: dict[str, Any] | None = None  # the signed override this run applied: file, action, nonce

    def as_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "g": self.g,
            "phase": self.phase,
            "verdict": self.verdict.value,
            "before": self.before,
            "after": self.after,
            "fencing_token": self.token,
            "steps": self.steps,
            "note": self.note,
            "due": self.due,
            "cost": self.cost,
            "override": self.override,
        }


@dataclass
class RunResult:
    plan: Plan
    outcomes: list[TraceOutcome] = field(default_factory=list)
    commit: str | None = None
    pushed_to: str | None = None
    pushed_owed: int = 0  # audit commits an earlier run made but did not get pushed, pushed by this one
    uncommitted: list[str] = field(default_factory=list)  # desired-state files acted on uncommitted (--allow-dirty)
    note: str = ""
    membership_due: float | None = None  # when an isolated node becomes pending or is evicted
    alerts: list[dict[str, Any]] = field(default_factory=list)  # alerts raised or resolved by this run
    placement: list[str] = field(default_factory=list)  # replica placement changes of this run (SPEC §6.1)
    barrier: dict[str, Any] | None = None  # the cluster-wide barrier after this run (SPEC §6.2)
    holder: str | None = None  # the name the run's traces took leases under (None: none ran)
    policy: list[dict[str, Any]] = field(default_factory=list)  # the pushes of the compiled desired state
    vclock: dict[str, Any] = field(default_factory=dict)  # vector-clock GC: pruned, merged, waiting (SPEC §7)

    @property
    def changed(self) -> bool:
        return self.commit is not None

    @property
    def next_due(self) -> float | None:
        """The earliest time a later run has something new to do (None: nothing scheduled)."""
        dues = [o.due for o in self.outcomes if o.due is not None]
        if self.membership_due is not None:
            dues.append(self.membership_due)
        return min(dues) if dues else None

    def exit_code(self) -> int:
        """SPEC §10: 5 a node was refused (its host key is not the pinned one) or its control files fail
        their integrity check, 3 needs a human (the minority view and a refused eviction too), 4 locked or
        fenced, 1 a step failed, 2 work remains for a later run (a Φ timeout not expired yet, a
        compensator backing off, suspend, a member not given the desired state), 0 converged. The first that applies wins."""
        if self.plan.refused or self.plan.tampered:
            return EXIT_VERIFICATION
        if self.plan.minority or self.plan.membership.get("eviction_blocked"):
            return EXIT_BLOCKED
        codes = {o.code for o in self.outcomes}
        if any(p.get("outcome") == "failed" for p in self.policy):
            codes.add(EXIT_PENDING)  # a member still to be given the desired state: a later run does
        for code in (EXIT_BLOCKED, EXIT_LOCKED, EXIT_ERROR, EXIT_PENDING):
            if code in codes:
                return code
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "haios-reconcile/v1",
            "repo": self.plan.repo,
            "observed_hash": self.plan.observed_hash,
            "minority": self.plan.minority,
            "suspended": self.plan.suspended,
            "membership": self.plan.membership,
            "unreadable": self.plan.unreadable,
            "unreached": self.plan.unreached,
            "traces": [o.as_dict() for o in self.outcomes],
            "overrides": self.plan.overrides,
            "commit": self.commit,
            "pushed_to": self.pushed_to,
            "pushed_owed": self.pushed_owed,
            "uncommitted": self.uncommitted,
            "note": self.note,
            "next_due": self.next_due,
            "alerts": self.alerts,
            "placement": self.placement,
            "barrier": self.barrier,
            "policy": self.policy,
            "vclock": self.vclock,
            "exit_code": self.exit_code(),
        }


class TraceStop(Exception):
    """End this trace for this run (the journal says why; ``due``: when a later run may go on)."""

    def __init__(self, code: int, note: str, due: float | None = None) -> None:
        super().__init__(note)
        self.code = code
        self.note = note
        self.due = due
