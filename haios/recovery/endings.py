"""The ways a trace ends without rolling forward or back, as a part of the trace runner
(:class:`haios.recovery.trace.TraceRunner`): a signed abort (``ABANDON_AND_ABORT``), the one more
attempt a signed resume grants a HARD_FAILED trace, and HARD_FAILED itself once T_blocked passed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..coord.base import Lease
from ..errors import EXIT_BLOCKED
from . import journal as journals
from .machine import Action, Event, State
from .model import StepAction, TraceOutcome, TracePlan, TraceStop, Verdict
from .sel import SUCCEEDED

if TYPE_CHECKING:
    from .trace import TraceRunner

# the plan steps each action carries out, in the plan's order
STEPS_OF = {
    Action.REPLAY_AND_COMMIT: frozenset({StepAction.REPAIR, StepAction.SETTLE, StepAction.FORWARD}),
    Action.COMPENSATE: frozenset({StepAction.REPAIR, StepAction.SETTLE, StepAction.COMPENSATE}),
    Action.RESTORE_AND_ABORT: frozenset({StepAction.ROLLBACK}),
    Action.ABANDON_AND_ABORT: frozenset({StepAction.REPAIR, StepAction.SETTLE, StepAction.ROLLBACK}),
}


@dataclass
class TraceRun:
    """One trace in this run: its plan, journal, lease and what is reported of it."""

    trace: TracePlan
    j: journals.Journal
    lease: Lease
    outcome: TraceOutcome
    # the participants this run committed or aborted the transition on: node -> (outcome, vector clock)
    ended: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)  # where a resumed phase command is still at work


def abort(runner: TraceRunner, r: TraceRun) -> None:
    """A signed abort: ABORT_PHASE on every participant that has the phase open, nothing
    compensated (the side effects still owed are abandoned, and named), the barrier released."""
    trace, j = r.trace, r.j
    abandoned = sorted({k for s in trace.steps for k in s.get("abandon") or []})

    def abandon_and_abort() -> None:
        runner.sel.abandon(abandoned, runner.clock())  # no compensator runs for these again
        runner.steps(r, trace, STEPS_OF[Action.ABANDON_AND_ABORT])

    if State(j.state) is State.BLOCKED:
        journals.advance(j, Event.HEALED, runner.clock)
    left = f"; left uncompensated: {', '.join(abandoned)}" if abandoned else ""
    journals.advance(
        j,
        Event.ACK_ABORT,
        runner.clock,
        decision=Verdict.ABORT,
        reason=f"{trace.reason}{left}",
        work={Action.ABANDON_AND_ABORT: abandon_and_abort},
    )


def retry(runner: TraceRunner, r: TraceRun) -> None:
    """A signed resume on a HARD_FAILED trace: one more attempt for each compensation it abandoned,
    under the ledger's rules (a key that succeeded is not run again). A compensation that fails
    again is abandoned again; the trace is CLEAN_EXIT once none is left, else HARD_FAILED still."""
    trace, j = r.trace, r.j
    failed: list[str] = []

    def compensate_each() -> None:
        for index, s in enumerate(trace.steps, 1):
            runner.renew(r)
            runner.tick(trace, s["node"], "compensate", index, finished=False)
            try:
                timings = runner.compensations.compensate(trace, j, runner.ops(r), s, retry=True)
            except TraceStop as stop:
                runner.sel.abandon([s["key"]], runner.clock())
                j.add_step(runner.clock(), s["node"], "compensate", "abandoned again", key=s["key"], error=stop.note)
                failed.append(s["key"])
            else:
                j.add_step(runner.clock(), s["node"], "compensate", "compensated", key=s["key"], timings=timings)
            r.outcome.steps += 1
            runner.tick(trace, s["node"], "compensate", index, finished=True)

    journals.advance(j, Event.ACK_RESUME, runner.clock, work={Action.COMPENSATE: compensate_each})
    j.abandoned = [a for a in j.abandoned if a.get("key") in failed]
    if failed:
        journals.advance(
            j, Event.COMPENSATOR_FAILED, runner.clock, reason=f"one more attempt failed for {', '.join(failed)}"
        )
        raise TraceStop(EXIT_BLOCKED, f"HARD_FAILED: {', '.join(failed)} still uncompensated after one more attempt")
    reason = f"{trace.reason}: every one compensated"
    journals.advance(j, Event.DONE, runner.clock, decision=Verdict.ROLLBACK, reason=reason)


def _begin(runner: TraceRunner, trace: TracePlan, node: str) -> int | None:
    """Where the node's attempt at the trace's (g, phase) begins in its WAL: how a later run finds
    that attempt's records once the node has moved past it."""
    o = runner.ctx.observations.get(node)
    summary = o.phases.get((trace.g, trace.phase)) if o is not None else None
    return summary.begin_lamport if summary is not None else None


def hard_fail(runner: TraceRunner, r: TraceRun) -> None:
    """T_blocked passed: give up on the stuck side effects, abort everywhere, alert (SPEC §4.1)."""
    trace, j, ops = r.trace, r.j, runner.ops(r)
    compensations = [x for x in trace.steps if x["action"] == StepAction.COMPENSATE]
    done: list[tuple[dict[str, Any], Any]] = []
    owed: set[str] = set()
    for x in compensations:
        entry = runner.sel.entry(x["key"])
        if entry is not None and entry.state == SUCCEEDED:
            done.append((x, entry.result))  # it did succeed (a run was killed before the node heard)
        else:
            owed.add(x["key"])
    owed |= {k for k, v in j.compensation.items() if v.get("state") not in (SUCCEEDED, None)}
    stuck = sorted(owed)

    def abandon_and_abort() -> None:
        for x, result in done:  # record that, not a debt
            ops.compensated(x["node"], key=x["key"], result=result, from_lamport=x.get("from_lamport"))
        runner.sel.abandon(stuck, runner.clock())
        # what a signed resume would run again (plan lists it with the override that does)
        keep = ("node", "key", "kind", "compensator", "params", "cost", "from_lamport")
        j.abandoned = [
            {k: x.get(k) for k in keep} | {"from_lamport": x.get("from_lamport") or _begin(runner, trace, x["node"])}
            for x in compensations
            if x["key"] in stuck
        ]
        why = f"HARD_FAILED {trace.trace_id}: compensators failed for {runner.t.t_blocked:.0f} s"
        for node in trace.participants:
            result = ops.rollback(node, reason=why, abandon=stuck)
            j.add_step(runner.clock(), node, "rollback", str(result.get("outcome")), abandoned=stuck)
            r.outcome.steps += 1

    message = (
        f"g={trace.g} {trace.phase}: BLOCKED_COMPENSATOR for {runner.t.t_blocked / 60:.0f} min; rolled back "
        f"without compensating {', '.join(stuck)}; the barrier is released"
    )
    journals.advance(
        j,
        Event.T_BLOCKED_EXPIRED,
        runner.clock,
        reason=f"compensation of {', '.join(stuck)} failed past T_blocked",
        alert=("compensator_timeout", message, {}),
        work={Action.ABANDON_AND_ABORT: abandon_and_abort},
    )
    raise TraceStop(EXIT_BLOCKED, f"HARD_FAILED: {', '.join(stuck)} left uncompensated (alert raised)")
