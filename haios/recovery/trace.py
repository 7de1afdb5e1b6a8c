"""The trace runner: carry one planned transition out, driven by the state machine.

For a trace: take its shard's lease (the fencing token goes with every node operation), take a
signed override when the plan has one (:mod:`.grant`), then feed the machine the plan's event and
carry out the :class:`~haios.recovery.machine.Action`\\ s it returns
(:func:`haios.recovery.journal.advance`): ``REPLAY_AND_COMMIT`` runs the plan's repair, settle and
forward steps, ``COMPENSATE`` its compensations (:mod:`.compensate`), ``RESTORE_AND_ABORT`` its
rollbacks, ``RUN_RESUME_HOOK`` the phase's resume hook, ``ABANDON_AND_ABORT`` an abort that leaves
the side effects still owed. Every node operation writes its RECOVERY checkpoint before it returns
and the journal is saved after it, so a run killed anywhere is continued by the next from the first
unfinished step — every node operation is idempotent and every compensator gets its idempotency key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import (
    EXIT_BLOCKED,
    EXIT_ERROR,
    EXIT_LOCKED,
    EXIT_PENDING,
    DataSchemaError,
    FencedError,
    HaiosError,
    LockHeldError,
    UsageError,
)
from ..events import Sink, make
from ..timefmt import utc
from ..vclock import VClock
from . import endings, grant
from . import journal as journals
from .assess import assess
from .compensate import Compensations, placeholders
from .endings import STEPS_OF, TraceRun
from .machine import NEEDS_A_HUMAN, TERMINAL, Action, Event, State
from .model import STOPPED, Context, StepAction, TraceOutcome, TracePlan, TraceStop, Verdict
from .nodeops import NodeOps
from .sel import SelStore

Progress = Callable[[dict[str, Any]], None]


class TraceRunner:
    """Runs the traces of one reconcile run (``holder``: this run's name on the leases)."""

    def __init__(
        self,
        ctx: Context,
        holder: str,
        clock: Callable[[], float],
        progress: Progress | None = None,
        desired_commit: str | None = None,
        events: Sink | None = None,
    ) -> None:
        self.ctx = ctx
        self.events = events
        self.desired_commit = desired_commit
        self.holder = holder
        self.clock = clock
        self.progress = progress
        self.t = ctx.config.thresholds
        self.sel = SelStore(ctx.repo, self.t)
        self.compensations = Compensations(ctx, self.sel, clock, f"{holder}@{clock():.3f}")

    # -- plumbing --------------------------------------------------------------------------------

    def ops(self, r: TraceRun) -> NodeOps:
        t = r.trace
        return NodeOps(self.ctx.transport, t.trace_id, t.g, t.phase, r.lease.token)

    def tick(self, trace: TracePlan, node: str | None, action: str, index: int, finished: bool) -> None:
        """Tell the progress callback that step ``index`` of the trace starts or has finished
        (``node_total``: how many of the trace's steps run on that node)."""
        if self.progress is not None:
            node_total = sum(1 for s in trace.steps if s["node"] == node)
            event = {"trace_id": trace.trace_id, "node": node, "action": action, "step": index}
            self.progress({**event, "total": len(trace.steps), "node_total": node_total, "finished": finished})

    def renew(self, r: TraceRun) -> None:
        now = self.clock()
        if r.lease.expires - now <= self.t.lease_ttl / 2:
            r.lease = self.ctx.backend.renew(r.lease, self.t.lease_ttl, now)

    def _journal(self, trace: TracePlan) -> journals.Journal:
        j = journals.find(self.ctx.repo, trace.trace_id) or journals.Journal(
            trace.trace_id,
            self.ctx.config.cluster.name,
            trace.g,
            trace.phase,
            state=trace.state,
            participants=list(trace.participants),
            opened_at=utc(self.clock()),
            detection={"last_activity": trace.last_activity, "detected_at": self.ctx.now},
        )
        if self.events is not None:
            sink = self.events

            def tell(kind: str, fields: dict[str, Any]) -> None:
                sink(make(kind, trace.trace_id, g=trace.g, phase=trace.phase, **fields))

            j.listener = tell
        return j

    # -- one trace -------------------------------------------------------------------------------

    def run(self, trace: TracePlan) -> TraceOutcome:
        """Carry ``trace`` out as far as this run can; the outcome says where it stands and why."""
        outcome = TraceOutcome(trace.trace_id, trace.g, trace.phase, trace.verdict, trace.state, trace.state)
        if trace.verdict is Verdict.UNREADABLE:  # nothing of it is touched (least of all its journal) until restored
            outcome.code, outcome.note = EXIT_BLOCKED, trace.reason
            return outcome
        j = self._journal(trace)
        if not trace.actionable:
            self._record_waiting(trace, j, outcome)
            if j.dirty:
                j.save(self.ctx.repo)
            outcome.recorded = j.writes > 0
            outcome.reason = j.reason
            return outcome
        granted = trace.override is not None and trace.override["effect"] in ("applies", "continuing")
        if State(j.state) is State.BLOCKED_COMPENSATOR and not granted:
            waiting = self._still_blocked(j, self.clock())
            if waiting is not None:
                # no lease, no new fencing token, nothing to commit: a cron run that changes nothing commits nothing
                outcome.code, outcome.note, outcome.due, outcome.reason = (
                    EXIT_BLOCKED,
                    waiting.note,
                    waiting.due,
                    j.reason,
                )
                return outcome
        now = self.clock()
        try:
            lease = self.ctx.backend.acquire(trace.shard, self.holder, trace.trace_id, self.t.lease_ttl, now)
        except LockHeldError as exc:
            outcome.code, outcome.note = EXIT_LOCKED, exc.message
            return outcome
        self._leased(TraceRun(trace, j, lease, outcome), granted, now)
        return outcome

    def _leased(self, r: TraceRun, granted: bool, now: float) -> None:
        """The trace's work under its lease, which is released at the end (unless it was taken over)."""
        trace, j, outcome = r.trace, r.j, r.outcome
        outcome.token = r.lease.token
        outcome.cost = list(trace.cost)
        j.set_cost(trace.cost)
        first_step = len(j.steps)
        j.add_token(r.lease.token)
        if r.lease.previous:
            j.add_step(now, None, "takeover", "ok", previous=r.lease.previous)
        released = False
        try:
            if granted:
                assert trace.override is not None
                grant.apply(self.ctx, self.sel, self.clock, trace, j, self.ops(r), self.desired_commit)
                if trace.override["effect"] == "applies":
                    outcome.override = {k: trace.override[k] for k in ("file", "action", "nonce")}
            self._drive(r)
            self._finished(r)
        except TraceStop as stop:
            outcome.code, outcome.note, outcome.due = stop.code, stop.note, stop.due
        except FencedError as exc:
            j.add_step(self.clock(), None, "fenced", "refused", error=exc.message)
            outcome.code, outcome.note = EXIT_LOCKED, exc.message
            released = True  # the lease is someone else's now
        except HaiosError as exc:
            # a node operation failed (unreachable mid-way, a version conflict in data/, a full disk):
            # the trace stays where its checkpoints are, for the next run
            j.add_step(self.clock(), None, "error", "failed", error=exc.message)
            outcome.code = exc.exit_code if exc.exit_code in (EXIT_BLOCKED, EXIT_LOCKED) else EXIT_ERROR
            outcome.note = exc.message
        finally:
            outcome.after = j.state
            outcome.reason = j.reason
            outcome.done = [
                f"{s.get('node') or '-'}: {s['action']}{' ' + s['key'] if s.get('key') else ''}: {s['outcome']}"
                for s in j.steps[first_step:]
            ]
            if j.dirty:
                j.save(self.ctx.repo)
            outcome.recorded = j.writes > 0
            if not released:
                self.ctx.backend.release(r.lease, self.clock())

    def _finished(self, r: TraceRun) -> None:
        """``phase_transition.finished`` once recovery committed or aborted the transition: in the
        journal and as an event, with the participants' clocks merged (each node wrote its own EVENT
        record before its end record)."""
        if not r.ended or State(r.j.state) not in TERMINAL:
            return
        outcomes = {outcome for outcome, _ in r.ended.values()}
        merged = VClock()
        for _, vc in r.ended.values():
            with contextlib.suppress(ValueError):  # a node's answer is data: a bad clock adds nothing
                merged = merged.merge(VClock.from_json(vc))
        finished = {
            "outcome": "committed" if "committed" in outcomes else "aborted",
            "nodes": sorted(r.ended),
            "vc": merged.to_json(),
            "at": utc(self.clock()),
        }
        r.j.finished = finished
        r.j.dirty = True
        if self.events is not None:
            t = r.trace
            self.events(
                make(
                    "phase_transition.finished",
                    t.trace_id,
                    g=t.g,
                    phase=t.phase,
                    outcome=finished["outcome"],
                    nodes=finished["nodes"],
                    vc=finished["vc"],
                )
            )

    def _record_waiting(self, trace: TracePlan, j: journals.Journal, outcome: TraceOutcome) -> None:
        """A trace this run does not act on: what its journal and outcome say of it."""
        state = State(j.state)
        if trace.verdict is Verdict.NOTHING:
            if state not in TERMINAL and state not in NEEDS_A_HUMAN:
                # finished by an earlier run (killed before it said so)
                journals.advance(j, Event.DONE, self.clock, reason=j.reason or trace.reason)
            elif state in NEEDS_A_HUMAN and state not in TERMINAL:
                # resolved on the nodes meanwhile, but the trace waits for a signed override to close it
                outcome.code = EXIT_BLOCKED
                outcome.note = f"{trace.reason}; the trace stays {state.value} until an override"
        elif trace.verdict is Verdict.WAIT:
            outcome.code, outcome.note, outcome.due = EXIT_PENDING, trace.reason, trace.wait_until
        elif trace.verdict is Verdict.BLOCKED and state in NEEDS_A_HUMAN:
            # it waits for a human already; a partition on top changes nothing of that (and is reported)
            outcome.code, outcome.note = EXIT_BLOCKED, f"{state.value} ({j.reason}); also {trace.reason}"
        elif trace.verdict is Verdict.BLOCKED:
            journals.advance(j, Event.PARTITIONED, self.clock, reason=trace.reason)
            outcome.code, outcome.note = EXIT_BLOCKED, trace.reason
        elif trace.verdict is Verdict.NEEDS_HUMAN:
            j.set_cost(trace.cost)
            if state is State.AWAITING_ACK:
                journals.advance(j, Event.NEEDS_HUMAN, self.clock)  # asked already: it goes on waiting
            else:
                alert = (trace.alert or "awaiting_ack", trace.reason, {"cost": trace.cost})
                journals.advance(
                    j, Event.NEEDS_HUMAN, self.clock, decision=Verdict.NEEDS_HUMAN, reason=trace.reason, alert=alert
                )
            outcome.code, outcome.note, outcome.cost = EXIT_BLOCKED, trace.reason, list(trace.cost)
        elif state in NEEDS_A_HUMAN:
            outcome.code, outcome.note = EXIT_BLOCKED, j.reason
        outcome.after = j.state

    def _still_blocked(self, j: journals.Journal, now: float) -> TraceStop | None:
        """Out of attempts: nothing runs until T_blocked passes (or a signed override says so) —
        the stop to report while it has not, None once it has."""
        since = j.blocked_since if j.blocked_since is not None else now
        if now - since >= self.t.t_blocked:
            return None
        until = since + self.t.t_blocked
        note = f"BLOCKED_COMPENSATOR: {j.reason}; HARD_FAILED at {utc(until)} unless a human acts"
        return TraceStop(EXIT_BLOCKED, note, until)

    def _drive(self, r: TraceRun) -> None:
        """Feed the machine the plan's event and carry out what it asks for."""
        j = r.j
        if r.trace.verdict is Verdict.ABORT:
            return endings.abort(self, r)
        if r.trace.verdict is Verdict.RETRY:
            return endings.retry(self, r)
        if State(j.state) is State.BLOCKED:
            journals.advance(j, Event.HEALED, self.clock)
        if State(j.state) is State.BLOCKED_COMPENSATOR:
            waiting = self._still_blocked(j, self.clock())
            if waiting is not None:
                raise waiting
            return endings.hard_fail(self, r)
        if r.trace.verdict is Verdict.RESUME:
            journals.advance(j, Event.RESUME, self.clock, work={Action.RUN_RESUME_HOOK: lambda: self._resume(r)})
            self._after_resume(r.trace, r.outcome, r.running)
        trace = r.trace
        event = Event.ROLL_FORWARD if trace.verdict is Verdict.FORWARD else Event.ROLL_BACK
        journals.advance(j, event, self.clock, decision=trace.verdict, reason=trace.reason, work=self._work(r, trace))
        journals.advance(j, Event.DONE, self.clock)
        return None

    @staticmethod
    def _after_resume(trace: TracePlan, outcome: TraceOutcome, running: list[str]) -> None:
        """The transition as assessed again after its resume hook: rolled now, or stopped here."""
        outcome.verdict = trace.verdict
        if running:
            raise TraceStop(EXIT_PENDING, f"its phase command is still running on {', '.join(running)}")
        if trace.verdict is Verdict.RESUME:
            raise TraceStop(EXIT_PENDING, "the resume hook ran; the executor has not PREPAREd yet")
        if not trace.actionable:
            raise TraceStop(EXIT_BLOCKED if trace.verdict in STOPPED else EXIT_PENDING, trace.reason)

    def _work(self, r: TraceRun, plan: TracePlan) -> Mapping[Action, Callable[[], None]]:
        """The handlers of the actions that run ``plan``'s steps."""

        def runs(kinds: frozenset[StepAction]) -> Callable[[], None]:
            return lambda: self.steps(r, plan, kinds)

        return {action: runs(kinds) for action, kinds in STEPS_OF.items() if action is not Action.ABANDON_AND_ABORT}

    # -- steps -----------------------------------------------------------------------------------

    def steps(self, r: TraceRun, plan: TracePlan, kinds: frozenset[StepAction]) -> None:
        """Run ``plan``'s steps of ``kinds``, in order, each checkpointed on its node and in the journal."""
        j = r.j
        for index, s in enumerate(plan.steps, 1):
            action = StepAction(s["action"])
            if action not in kinds:
                continue
            self.renew(r)
            node = s["node"]
            self.tick(plan, node, action, index, finished=False)
            result = self._step(r, plan, action, s)
            if result is None:  # replay failed validation: the rollback ran instead
                return
            j.add_step(
                self.clock(),
                node,
                action.value,
                str(result.get("outcome", "ok")),
                **({"key": s["key"]} if "key" in s else {}),
                **({"abandoned": list(s["abandon"])} if s.get("abandon") else {}),
                **({"timings": result["timings"]} if result.get("timings") else {}),
                **({"redone": list(result["redone"])} if result.get("redone") else {}),
            )
            j.save(self.ctx.repo)  # after the node's checkpoint: the journal tells the story, the WAL decides
            if result.get("outcome") in ("committed", "aborted") and isinstance(result.get("vc"), dict):
                r.ended[node] = (str(result["outcome"]), result["vc"])
            r.outcome.steps += 1
            self.tick(plan, node, action, index, finished=True)

    def _step(self, r: TraceRun, plan: TracePlan, action: StepAction, s: dict[str, Any]) -> dict[str, Any] | None:
        """One node operation of a plan step (None: a forward that failed validation, handled)."""
        ops, node = self.ops(r), s["node"]
        if action is StepAction.REPAIR:
            return ops.repair(node)
        if action is StepAction.FORWARD:
            try:
                return ops.forward(node)
            except DataSchemaError as exc:
                r.j.add_step(self.clock(), node, "forward", "invalid", error=exc.message)
                self._validation_failed(r, exc.message)
                return None
        if action is StepAction.SETTLE:
            return ops.settle(node, force=bool(s.get("force")))
        if action is StepAction.COMPENSATE:
            self.compensations.over_budget(plan, r.j, s)
            return {"outcome": "compensated", "timings": self.compensations.compensate(plan, r.j, ops, s)}
        if action is StepAction.ROLLBACK:
            reason = f"haios recovery {plan.trace_id}: {plan.reason}"
            return ops.rollback(node, reason=reason, abandon=s.get("abandon"))
        raise UsageError(f"plan step {action.value!r} cannot run here")

    def _resume(self, r: TraceRun) -> None:
        """RUN_RESUME_HOOK: the phase's resume playbook on every participant that began it; then the
        transition is assessed again (the hook may have brought it to PREPARE)."""
        trace, j, ops = r.trace, r.j, self.ops(r)
        for s in trace.steps:
            if s["action"] != StepAction.RESUME:
                continue
            if s.get("command") is not None:  # the phase's own command, after its last STEP
                try:
                    answer = ops.resume_command(s["node"])
                except HaiosError as exc:
                    j.add_step(self.clock(), s["node"], "resume", "failed", error=exc.one_line())
                    continue
                outcome = str(answer.get("outcome"))
                detail = {"skipped": s.get("skip") or [], "reason": answer.get("reason") or None}
                j.add_step(self.clock(), s["node"], "resume", "ok" if outcome == "prepared" else outcome, result=detail)
                r.outcome.steps += 1
                if outcome == "running":
                    r.running.append(s["node"])
                continue
            pb = self.ctx.config.playbooks.get(s.get("playbook") or "")
            if pb is None:
                j.add_step(self.clock(), s["node"], "resume", "failed", error=f"no playbook {s.get('playbook')!r}")
                continue
            values = placeholders(s, trace, s["node"]) | {"token": str(r.lease.token)}
            ok, _, result = self.compensations.run_playbook(pb, values, s["node"])
            ops.checkpoint(s["node"], step="resume", outcome="ok" if ok else "failed")
            j.add_step(self.clock(), s["node"], "resume", "ok" if ok else "failed", result=result)
            r.outcome.steps += 1
        if not r.running:  # a command still at work is not an attempt that failed
            j.resume_attempts += 1
        j.dirty = True
        r.trace = assess(self.ctx, trace.g, trace.phase, trace.participants, resume_attempts=j.resume_attempts)

    def _validation_failed(self, r: TraceRun, error: str) -> None:
        """Replay found a file its schema rejects: roll back if nothing committed yet (SPEC §4.2)."""
        j, trace = r.j, r.trace
        back = assess(
            self.ctx, trace.g, trace.phase, trace.participants, force_rollback=f"replay failed validation: {error}"
        )
        if back.verdict is Verdict.UNREADABLE:  # the rollback needs a file that cannot be used: wait for it
            raise TraceStop(EXIT_BLOCKED, back.reason)
        if back.verdict is not Verdict.ROLLBACK:
            alert: tuple[str, str, dict[str, Any]] = ("awaiting_ack", back.reason, {})
            journals.advance(
                j, Event.NEEDS_HUMAN, self.clock, decision=Verdict.NEEDS_HUMAN, reason=back.reason, alert=alert
            )
            raise TraceStop(EXIT_BLOCKED, back.reason)
        r.outcome.verdict = Verdict.ROLLBACK
        work = self._work(r, back)
        journals.advance(
            j, Event.VALIDATION_FAILED, self.clock, decision=Verdict.ROLLBACK, reason=back.reason, work=work
        )
