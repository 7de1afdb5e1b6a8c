"""The decision rule of SPEC §4.2 as a pure function of what the participants hold, and the steps
that carry a decision out. Nothing here reads a file or a clock: ``now`` and the Φ timeout come in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.model import PhasePolicy
from ..vclock import VClock, causal_order, describe_clock
from .machine import Event
from .model import StepAction, Verdict

STATUSES = ("committed", "aborted", "prepared", "begun", "absent", "unreachable", "partitioned", "corrupt")


@dataclass(frozen=True)
class View:
    """One participant of (g, phase), as the reconciler sees it."""

    node: str
    status: str  # one of STATUSES
    begin_ts: float | None = None
    side_effects: tuple[dict[str, Any], ...] = ()
    torn: bool = False
    detail: str = ""
    from_lamport: int | None = None  # where the phase's BEGIN_PHASE is, when it already ended
    command: Mapping[str, Any] | None = None  # the phase command the attempt logged (haios.command)
    steps_done: tuple[str, ...] = ()  # the sub-steps its command logged, in order

    @property
    def resumable(self) -> bool:
        """Its command declared itself resumable, and no failed resume has said otherwise since."""
        return bool(self.command and self.command.get("resumable") is True)

    @property
    def uncompensated(self) -> list[str]:
        return [e["key"] for e in self.side_effects if not e.get("compensated") and not e.get("abandoned")]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    event: Event | None
    reason: str
    wait_until: float | None = None


@dataclass(frozen=True)
class Inputs:
    """Everything besides the views that the rule depends on."""

    policy: PhasePolicy = field(default_factory=PhasePolicy)
    timeout: float = 60.0  # the Φ timeout of the phase (k × P95)
    now: float = 0.0
    rollbacks_so_far: int = 0  # automatic rollbacks of this (g, phase) that already finished
    max_auto_attempts: int = 2
    resume_attempts: int = 0  # resume hooks already run for this trace


def _nothing(views: Mapping[str, View], reason: str) -> Decision:
    torn = [n for n in sorted(views) if views[n].torn]
    if torn:
        return Decision(Verdict.FORWARD, Event.ROLL_FORWARD, f"{reason}; cut the torn WAL tail of {', '.join(torn)}")
    return Decision(Verdict.NOTHING, None, reason)


def _unreachable(node: str, detail: str) -> str:
    why = " ".join(detail.split())
    if why.startswith(f"{node}: "):
        why = why[len(node) + 2 :]
    return f"{node} unreachable ({why[:160]})" if why and why != "unreachable" else f"{node} unreachable"


def _after_commit(views: Mapping[str, View], by: dict[str, list[str]]) -> Decision:
    """Committed somewhere: forward when everyone else PREPAREd, a human when someone cannot commit."""
    committed, prepared = by["committed"], by["prepared"]
    others = by["begun"] + by["aborted"] + by["absent"]
    if not prepared and not others:
        return _nothing(views, "committed on every participant")
    if others:
        return Decision(
            Verdict.NEEDS_HUMAN,
            Event.NEEDS_HUMAN,
            f"committed on {', '.join(committed)} but {', '.join(others)} cannot commit "
            "(no PREPARE): the transition cannot be made atomic automatically",
        )
    return Decision(
        Verdict.FORWARD,
        Event.ROLL_FORWARD,
        f"committed on {', '.join(committed)}; {', '.join(prepared)} PREPAREd: roll forward",
    )


def _begun_only(views: Mapping[str, View], begun: list[str], inputs: Inputs) -> Decision | str:
    """Participants that began without PREPARE: wait for the Φ timeout, hold, resume — or the reason
    to roll back."""
    started = max((views[n].begin_ts or 0.0) for n in begun)
    deadline = started + inputs.timeout
    if inputs.now < deadline:
        return Decision(
            Verdict.WAIT,
            None,
            f"{', '.join(begun)} without PREPARE for {inputs.now - started:.1f} s; "
            f"the Φ timeout ({inputs.timeout:.1f} s) has not expired",
            wait_until=deadline,
        )
    policy = inputs.policy
    if policy.on_partial == "hold":
        return Decision(
            Verdict.NEEDS_HUMAN, Event.NEEDS_HUMAN, f"{', '.join(begun)} without PREPARE and on_partial is hold"
        )
    left = inputs.resume_attempts < policy.max_resume_attempts
    if policy.on_partial == "resume" and left and all(views[n].resumable for n in begun):
        return Decision(
            Verdict.RESUME,
            Event.RESUME,
            f"{', '.join(begun)} without PREPARE: its command is resumable, run it again after its last STEP "
            f"(attempt {inputs.resume_attempts + 1} of {policy.max_resume_attempts})",
        )
    resumable = policy.on_partial == "resume" and policy.resume_playbook
    if resumable and left:
        return Decision(
            Verdict.RESUME,
            Event.RESUME,
            f"{', '.join(begun)} without PREPARE: resume hook {policy.resume_playbook} "
            f"(attempt {inputs.resume_attempts + 1} of {policy.max_resume_attempts})",
        )
    return f"{', '.join(begun)} without PREPARE past the Φ timeout ({inputs.timeout:.1f} s): roll back"


def decide(views: Mapping[str, View], inputs: Inputs) -> Decision:
    """SPEC §4.2 for one (g, phase); the first rule that applies wins."""
    by: dict[str, list[str]] = {s: [] for s in STATUSES}
    for name in sorted(views):
        by[views[name].status].append(name)
    if by["corrupt"]:
        return Decision(
            Verdict.NEEDS_HUMAN,
            Event.NEEDS_HUMAN,
            f"the WAL of {', '.join(by['corrupt'])} is corrupt mid-log: never guess (repair or restore it first)",
        )
    if by["unreachable"] or by["partitioned"]:
        who = [_unreachable(n, views[n].detail) for n in by["unreachable"]]
        who += [f"{n} PARTITIONED" for n in by["partitioned"]]
        return Decision(Verdict.BLOCKED, Event.PARTITIONED, f"waiting for {', '.join(who)} (BLOCKED, not FAILED)")
    committed, prepared, begun = by["committed"], by["prepared"], by["begun"]
    aborted, absent = by["aborted"], by["absent"]
    if committed:
        return _after_commit(views, by)
    if not prepared and not begun:
        owing = [n for n in aborted if views[n].uncompensated]
        if owing:
            # SPEC §4.3: an aborted phase's side effects are compensated by recovery, whoever aborted it
            keys = [k for n in owing for k in views[n].uncompensated]
            return Decision(
                Verdict.ROLLBACK,
                Event.ROLL_BACK,
                f"aborted on {', '.join(aborted)}; side effects not compensated yet: {', '.join(keys)}",
            )
        return _nothing(views, "rolled back (or never begun) on every participant")
    if begun:
        found = _begun_only(views, begun, inputs)
        if isinstance(found, Decision):
            return found
        reason = found
    elif aborted or absent:
        reason = f"{', '.join(aborted + absent)} aborted or never began while {', '.join(prepared)} PREPAREd: roll back"
    elif inputs.policy.on_partial == "rollback":
        reason = f"PREPAREd on {', '.join(prepared)}, committed nowhere, and on_partial is rollback"
    else:
        return Decision(Verdict.FORWARD, Event.ROLL_FORWARD, f"PREPAREd on every participant ({', '.join(prepared)})")
    if inputs.rollbacks_so_far >= inputs.max_auto_attempts:
        return Decision(
            Verdict.NEEDS_HUMAN,
            Event.NEEDS_HUMAN,
            f"flapping: {inputs.rollbacks_so_far} automatic rollbacks of this transition already; "
            "a signed resume override is needed",
        )
    return Decision(Verdict.ROLLBACK, Event.ROLL_BACK, reason)


def _clock(value: Any) -> VClock:
    """A side effect's vector clock as the node reported it; one that is not a clock (a damaged or
    forged record) is the zero clock: concurrent with the others, still after its node's earlier ones."""
    try:
        return VClock.from_json(value or {})
    except ValueError:
        return VClock()


def steps_for(
    decision: Decision, views: Mapping[str, View], *, resume_playbook: str | None = None
) -> list[dict[str, Any]]:
    """The node operations that carry ``decision`` out, in order."""
    steps: list[dict[str, Any]] = []
    if decision.verdict not in (Verdict.FORWARD, Verdict.ROLLBACK, Verdict.RESUME, Verdict.ABORT):
        return steps
    names = sorted(views)
    for n in names:
        if views[n].torn:
            steps.append(
                {"node": n, "action": StepAction.REPAIR.value, "detail": "cut the torn WAL tail (kept in .broken)"}
            )
    if decision.verdict is Verdict.FORWARD:
        for n in names:
            if views[n].status == "prepared":
                steps.append(
                    {
                        "node": n,
                        "action": StepAction.FORWARD.value,
                        "detail": "replay intents idempotently, COMMIT_PHASE",
                    }
                )
    elif decision.verdict is Verdict.ABORT:
        # a signed abort: ABORT_PHASE (data/ restored from the BEGIN snapshot) without compensating,
        # the side effects still owed named as abandoned in the record
        for n in names:
            owed = views[n].uncompensated
            if views[n].status in ("prepared", "begun") or (views[n].status == "aborted" and owed):
                steps.append(
                    {
                        "node": n,
                        "action": StepAction.ROLLBACK.value,
                        "abandon": owed,
                        "detail": "ABORT_PHASE without compensation"
                        + (f", abandoning {', '.join(owed)}" if owed else ""),
                    }
                )
    elif decision.verdict is Verdict.RESUME:
        for n in names:
            v = views[n]
            if v.status != "begun":
                continue
            if v.resumable and v.command is not None:
                skip = list(v.steps_done)
                steps.append(
                    {
                        "node": n,
                        "action": StepAction.RESUME.value,
                        "command": list(v.command.get("argv") or []),
                        "skip": skip,
                        "detail": "run its command again after its last STEP"
                        + (f", skipping {', '.join(skip)}" if skip else " (no STEP logged: from its start)"),
                    }
                )
            else:
                steps.append(
                    {
                        "node": n,
                        "action": StepAction.RESUME.value,
                        "playbook": resume_playbook,
                        "detail": "continue after the last STEP",
                    }
                )
    else:
        # SPEC §4.3: compensate in reverse causal order across the participants (unknown outcomes
        # too), then rewind the state
        debts = [
            (n, e) for n in names for e in views[n].side_effects if not e.get("compensated") and not e.get("abandoned")
        ]
        clocks = [(n, _clock(e.get("vc"))) for n, e in debts]
        for i in reversed(causal_order(clocks)):
            n, effect = debts[i]
            steps.append(
                {
                    "node": n,
                    "action": StepAction.COMPENSATE.value,
                    "key": effect["key"],
                    "kind": effect["kind"],
                    "compensator": effect["compensator"],
                    "params": effect["params"],
                    "cost": effect.get("cost"),
                    "from_lamport": views[n].from_lamport,
                    "vc": clocks[i][1].to_json(),
                    "detail": f"{effect['compensator']} for {effect['kind']}"
                    + ("" if effect.get("returned") else " (outcome unknown)")
                    + f" [clock {describe_clock(clocks[i][1])}]",
                }
            )
        for n in names:
            if views[n].status in ("prepared", "begun"):
                steps.append(
                    {
                        "node": n,
                        "action": StepAction.ROLLBACK.value,
                        "detail": "restore data/ from the BEGIN snapshot, ABORT_PHASE",
                    }
                )
    return steps
