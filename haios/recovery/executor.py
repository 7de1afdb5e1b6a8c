"""``haios reconcile``: carry a plan out through the transport, checkpointing every step.

For each trace, in transition order: take the shard's lease (its fencing token goes with every node
operation), walk the state machine from the trace's current state, run the steps — each node
operation writes its RECOVERY checkpoint before it returns and the journal is saved after it — and
release the lease. A run killed anywhere leaves checkpoints that the next run finds: it continues the
same trace from the first unfinished step, and because every node operation is idempotent and every
compensator is called with its idempotency key, nothing is done twice.

At the end, one git commit records every journal and status file that changed (nothing changed:
nothing committed).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import alerts, audit, controlfile
from ..clock import wall_clock
from ..config.dataschemas import DataSchemaError
from ..config.model import Playbook
from ..config.model import phase_order as order
from ..coord import Lease, new_holder
from ..errors import FencedError, HaiosError, LockHeldError, TransportError, UsageError
from ..events import Sink, logged, make
from ..fsutil import atomic_write, makedirs_durable
from ..layout import ALERTS_DIR, APPLIED_FILE, JOURNAL_DIR, MEMBERSHIP_FILE, PLACEMENT_FILE, SEL_DIR, STATUS_FILE
from ..node.transaction import OVERRIDE_STEP
from ..overrides import apply as overrides
from ..overrides.verify import applied
from ..timefmt import utc
from ..transport import DEFAULT_PARALLEL
from . import journal as journals
from . import membership as members
from .machine import NEEDS_A_HUMAN, TERMINAL, Event, State, step
from .plan import (
    COST_ALERT,
    UNREADABLE,
    Context,
    Plan,
    TracePlan,
    build,
    cost_breach,
    plan_events,
    plan_transition,
)
from .sel import EXHAUSTED, SUCCEEDED, Entry, ParamsMismatch, SelStore

Progress = Callable[[dict[str, Any]], None]
# in-run waits before retrying a transport error (never a compensator's own failure: that waits for a later run)
TRANSIENT_RETRIES = (0.2, 0.5, 1.0)


@dataclass
class TraceOutcome:
    trace_id: str
    g: int
    phase: str
    verdict: str
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
            "verdict": self.verdict,
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
        compensator backing off, suspend), 0 converged. The first that applies wins."""
        if self.plan.refused or self.plan.tampered:
            return 5
        if self.plan.minority or self.plan.membership.get("eviction_blocked"):
            return 3
        codes = {o.code for o in self.outcomes}
        for code in (3, 4, 1, 2):
            if code in codes:
                return code
        return 0

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
            "exit_code": self.exit_code(),
        }


class _Stop(Exception):
    """End this trace for this run (the journal says why; ``due``: when a later run may go on)."""

    def __init__(self, code: int, note: str, due: float | None = None) -> None:
        super().__init__(note)
        self.code = code
        self.note = note
        self.due = due


def _placeholders(step_: dict[str, Any], trace: TracePlan, node: str) -> dict[str, str]:
    values = {k: str(v) for k, v in (step_.get("params") or {}).items()}
    # haios's own names win over parameters of the same name
    values.update(key=step_.get("key", ""), node=node, g=str(trace.g), phase=trace.phase)
    values.update(trace_id=trace.trace_id, kind=step_.get("kind", ""))
    return values


class _Runner:
    def __init__(
        self,
        ctx: Context,
        holder: str,
        clock: Callable[[], float],
        progress: Progress | None,
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
        self.run_id = f"{holder}@{clock():.3f}"

    # -- plumbing --------------------------------------------------------------------------------

    def _tick(self, trace: TracePlan, node: str | None, action: str, index: int, finished: bool) -> None:
        """Tell the progress callback that step ``index`` of the trace starts or has finished
        (``node_total``: how many of the trace's steps run on that node)."""
        if self.progress is not None:
            node_total = sum(1 for s in trace.steps if s["node"] == node)
            event = {"trace_id": trace.trace_id, "node": node, "action": action, "step": index}
            self.progress({**event, "total": len(trace.steps), "node_total": node_total, "finished": finished})

    def _renew(self, lease: Lease) -> Lease:
        now = self.clock()
        if lease.expires - now > self.t.lease_ttl / 2:
            return lease
        return self.ctx.backend.renew(lease, self.t.lease_ttl, now)

    def _call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.ctx.transport.call(node, request)

    def _run_playbook(self, pb: Playbook, values: dict[str, str], node: str) -> tuple[bool, bool, Any]:
        """Run a playbook for ``node``; returns (succeeded, retryable, result or error)."""
        if pb.run_command:
            try:
                argv = [part.format_map(values) for part in pb.run_command]
            except (KeyError, ValueError) as exc:
                return False, False, f"playbook {pb.name}: no value for placeholder {exc}"
            env = {"HAIOS_TRACE_ID": values["trace_id"], "HAIOS_IDEMPOTENCY_KEY": values["key"]}
            for wait in (*TRANSIENT_RETRIES, None):
                try:
                    done = self.ctx.transport.run(node, argv, timeout=pb.timeout, env=env)
                    break
                except TransportError:
                    # the node was not reached: the compensator did not run, so trying again is safe;
                    # still unreachable, it is this run's error (the trace waits), not a failed attempt
                    if wait is None:
                        raise
                    time.sleep(wait)
            if done.ok:
                return True, True, {"exit": 0, "stdout": done.stdout[-500:].strip()}
            detail = (done.stderr.strip() or done.stdout.strip())[-300:]
            return False, pb.retryable(done.returncode), f"exit {done.returncode}: {detail}"
        assert pb.run_python is not None
        module, _, name = pb.run_python.partition(":")
        try:
            func = getattr(importlib.import_module(module), name)
            return True, True, func(**values)
        except Exception as exc:  # noqa: BLE001 - a compensator's own failure is data, not a crash
            # an exception class may say it is final (``retryable = False``), as NonRetryable does
            return False, bool(getattr(exc, "retryable", True)), f"{type(exc).__name__}: {exc}"

    # -- one trace -------------------------------------------------------------------------------

    def run(self, trace: TracePlan) -> TraceOutcome:
        outcome = TraceOutcome(trace.trace_id, trace.g, trace.phase, trace.verdict, trace.state, trace.state)
        if trace.verdict == UNREADABLE:  # nothing of it is touched (least of all its journal) until restored
            outcome.code, outcome.note = 3, trace.reason
            return outcome
        repo = self.ctx.repo
        now = self.clock()
        j = journals.find(repo, trace.trace_id) or journals.Journal(
            trace.trace_id,
            self.ctx.config.cluster.name,
            trace.g,
            trace.phase,
            state=trace.state,
            participants=list(trace.participants),
            opened_at=utc(now),
            detection={"last_activity": trace.last_activity, "detected_at": self.ctx.now},
        )
        if self.events is not None:
            sink = self.events

            def tell(kind: str, fields: dict[str, Any]) -> None:
                sink(make(kind, trace.trace_id, g=trace.g, phase=trace.phase, **fields))

            j.listener = tell
        if not trace.actionable:
            self._record_waiting(trace, j, outcome, now)
            if j.dirty:
                j.save(repo)
            outcome.recorded = j.writes > 0
            outcome.reason = j.reason
            return outcome
        granted = trace.override is not None and trace.override["effect"] in ("applies", "continuing")
        if State(j.state) is State.BLOCKED_COMPENSATOR and not granted:
            waiting = self._still_blocked(j, now)
            if waiting is not None:
                # no lease, no new fencing token, nothing to commit: a cron run that changes nothing commits nothing
                outcome.code, outcome.note, outcome.due, outcome.reason = 3, waiting.note, waiting.due, j.reason
                return outcome
        try:
            lease = self.ctx.backend.acquire(trace.shard, self.holder, trace.trace_id, self.t.lease_ttl, now)
        except LockHeldError as exc:
            outcome.code, outcome.note = 4, exc.message
            return outcome
        outcome.token = lease.token
        outcome.cost = list(trace.cost)
        j.set_cost(trace.cost)
        first_step = len(j.steps)
        j.add_token(lease.token)
        if lease.previous:
            j.add_step(now, None, "takeover", "ok", previous=lease.previous)
        released = False
        try:
            if granted:
                assert trace.override is not None
                self._apply_override(trace, j, lease)
                if trace.override["effect"] == "applies":
                    outcome.override = {k: trace.override[k] for k in ("file", "action", "nonce")}
            lease = self._drive(trace, j, lease, outcome)
        except _Stop as stop:
            outcome.code, outcome.note, outcome.due = stop.code, stop.note, stop.due
        except FencedError as exc:
            j.add_step(self.clock(), None, "fenced", "refused", error=exc.message)
            outcome.code, outcome.note = 4, exc.message
            released = True  # the lease is someone else's now
        except HaiosError as exc:
            # a node operation failed (unreachable mid-way, a version conflict in data/, a full disk):
            # the trace stays where its checkpoints are, for the next run
            j.add_step(self.clock(), None, "error", "failed", error=exc.message)
            outcome.code, outcome.note = exc.exit_code if exc.exit_code in (3, 4) else 1, exc.message
        finally:
            outcome.after = j.state
            outcome.reason = j.reason
            outcome.done = [
                f"{s.get('node') or '-'}: {s['action']}{' ' + s['key'] if s.get('key') else ''}: {s['outcome']}"
                for s in j.steps[first_step:]
            ]
            if j.dirty:
                j.save(repo)
            outcome.recorded = j.writes > 0
            if not released:
                self.ctx.backend.release(lease, self.clock())
        return outcome

    def _record_waiting(self, trace: TracePlan, j: journals.Journal, outcome: TraceOutcome, now: float) -> None:
        state = State(j.state)
        if trace.verdict == "nothing":
            if state not in TERMINAL and state not in NEEDS_A_HUMAN:
                state, _ = step(state, Event.DONE)  # finished by an earlier run (killed before it said so)
                j.set_state(state, now, reason=j.reason or trace.reason)
            elif state in NEEDS_A_HUMAN and state not in TERMINAL:
                # resolved on the nodes meanwhile, but the trace waits for a signed override to close it
                outcome.code, outcome.note = 3, f"{trace.reason}; the trace stays {state.value} until an override"
        elif trace.verdict == "wait":
            outcome.code, outcome.note, outcome.due = 2, trace.reason, trace.wait_until
        elif trace.verdict == "blocked" and state in NEEDS_A_HUMAN:
            # it waits for a human already; a partition on top changes nothing of that (and is reported)
            outcome.code, outcome.note = 3, f"{state.value} ({j.reason}); also {trace.reason}"
        elif trace.verdict == "blocked":
            if state is not State.BLOCKED:
                state, _ = step(state, Event.PARTITIONED)
            j.set_state(state, now, reason=trace.reason)
            outcome.code, outcome.note = 3, trace.reason
        elif trace.verdict == "needs_human":
            j.set_cost(trace.cost)
            if state is not State.AWAITING_ACK:
                state, _ = step(state, Event.NEEDS_HUMAN)
                j.set_state(state, now, decision="needs_human", reason=trace.reason)
                j.alert(now, trace.alert or "awaiting_ack", trace.reason, cost=trace.cost)
            outcome.code, outcome.note, outcome.cost = 3, trace.reason, list(trace.cost)
        elif state in NEEDS_A_HUMAN:
            outcome.code, outcome.note = 3, j.reason
        outcome.after = j.state

    def _still_blocked(self, j: journals.Journal, now: float) -> _Stop | None:
        """Out of attempts: nothing runs until T_blocked passes (or a signed override says so) —
        the stop to report while it has not, None once it has."""
        since = j.blocked_since if j.blocked_since is not None else now
        if now - since >= self.t.t_blocked:
            return None
        until = since + self.t.t_blocked
        return _Stop(3, f"BLOCKED_COMPENSATOR: {j.reason}; HARD_FAILED at {utc(until)} unless a human acts", until)

    def _apply_override(self, trace: TracePlan, j: journals.Journal, lease: Lease) -> None:
        """Take the trace's signed override: verified again by this run's clock, the grant written
        into the journal, then the nonce onto every participant's WAL and into
        status/overrides/applied.yaml (SPEC §5: never twice). A run killed between these steps finds
        the grant in the journal and only finishes the record."""
        assert trace.override is not None
        file, nonce = str(trace.override["file"]), str(trace.override["nonce"])
        now = self.clock()
        entry = next((o for o in j.overrides if o.get("nonce") == nonce), None)
        if entry is None:
            offer = overrides.judge(self.ctx.config, self.ctx.repo / file, now)
            if offer.nonce != nonce:
                raise _Stop(3, f"override {file} changed since it was planned; not applied")
            if offer.state != "valid":
                raise _Stop(3, f"override {file} not applied: {offer.state}: {offer.why}")
            action = str(offer.action)
            entry = {
                "file": file,
                "action": action,
                "nonce": nonce,
                "payload_sha256": offer.payload_sha256,
                "policy_version": offer.policy_version,
                "signers": offer.signers,
                "applied_at": utc(now),
                "fencing_token": lease.token,
            }
            j.overrides.append(entry)
            state = State(j.state)
            if state is State.BLOCKED:
                state, _ = step(state, Event.HEALED)
            if action == "resume" and state in (State.AWAITING_ACK, State.BLOCKED_COMPENSATOR):
                state, _ = step(state, Event.ACK_RESUME)
            elif action == "force-rollback":
                state, _ = step(state, Event.ACK_ROLLBACK)
            reopened: list[str] = []
            keys = [s["key"] for s in trace.steps if s["action"] == "compensate"]
            if action != "abort" and State(j.state) is State.BLOCKED_COMPENSATOR:
                # one more attempt for every compensator that ran out of them
                reopened = self.sel.reopen(keys, now, nonce)
                j.blocked_since = None
            elif action == "resume" and State(j.state) is State.HARD_FAILED:
                # one more attempt for every compensation the trace abandoned
                reopened = self.sel.reopen(keys, now, nonce, abandoned=True)
            j.set_state(state, now, reason=trace.reason)
            j.grant = {"file": file, "action": action, "nonce": nonce, "signers": offer.signers}
            detail = {"reopened": reopened} if reopened else {}
            j.add_step(now, None, "override", "applied", override=action, nonce=nonce, signers=offer.signers, **detail)
            j.save(self.ctx.repo)  # the grant is durable before the nonce is marked used
        if nonce not in applied(self.ctx.repo)["nonces"]:
            for node in trace.participants:
                # each participant's WAL keeps the nonce too: a replay is refused even if status/ is lost
                mark = {"nonce": nonce, "action": entry["action"], "payload_sha256": entry["payload_sha256"]}
                self._op(trace, lease, "checkpoint", node, step=OVERRIDE_STEP, outcome=mark)
            overrides.record(self.ctx.repo, trace.trace_id, entry, desired_commit=self.desired_commit)

    def _drive(self, trace: TracePlan, j: journals.Journal, lease: Lease, outcome: TraceOutcome) -> Lease:
        now = self.clock()
        if trace.verdict == "abort":
            return self._abort(trace, j, lease, outcome)
        if trace.verdict == "retry":
            return self._retry(trace, j, lease, outcome)
        state = State(j.state)
        if state is State.BLOCKED:
            state, _ = step(state, Event.HEALED)
        if state is State.BLOCKED_COMPENSATOR:
            waiting = self._still_blocked(j, now)
            if waiting is not None:
                raise waiting
            state, _ = step(state, Event.T_BLOCKED_EXPIRED)
            return self._hard_fail(trace, j, lease, outcome, state)
        if trace.verdict == "resume":
            state, _ = step(state, Event.RESUME)
            trace = self._resume(trace, j, lease, outcome)
            outcome.verdict = trace.verdict
            if trace.verdict == "resume":
                raise _Stop(2, "the resume hook ran; the executor has not PREPAREd yet")
            if not trace.actionable:
                raise _Stop(3 if trace.verdict in ("blocked", "needs_human", UNREADABLE) else 2, trace.reason)
        event = Event.ROLL_FORWARD if trace.verdict == "forward" else Event.ROLL_BACK
        state, _ = step(state, event)
        j.set_state(state, now, decision=trace.verdict, reason=trace.reason)
        lease = self._steps(trace, j, lease, outcome, state)
        state, _ = step(State(j.state), Event.DONE)
        j.set_state(state, self.clock())
        return lease

    def _resume(self, trace: TracePlan, j: journals.Journal, lease: Lease, outcome: TraceOutcome) -> TracePlan:
        for s in trace.steps:
            if s["action"] != "resume":
                continue
            pb = self.ctx.config.playbooks.get(s.get("playbook") or "")
            if pb is None:
                j.add_step(self.clock(), s["node"], "resume", "failed", error=f"no playbook {s.get('playbook')!r}")
                continue
            ok, _, result = self._run_playbook(
                pb, _placeholders(s, trace, s["node"]) | {"token": str(lease.token)}, s["node"]
            )
            self._call(
                s["node"],
                {
                    "op": "checkpoint",
                    "trace_id": trace.trace_id,
                    "token": lease.token,
                    "g": trace.g,
                    "phase": trace.phase,
                    "step": "resume",
                    "outcome": "ok" if ok else "failed",
                },
            )
            j.add_step(self.clock(), s["node"], "resume", "ok" if ok else "failed", result=result)
            outcome.steps += 1
        j.resume_attempts += 1
        j.dirty = True
        return plan_transition(self.ctx, trace.g, trace.phase, trace.participants, resume_attempts=j.resume_attempts)

    def _op(self, trace: TracePlan, lease: Lease, op: str, node: str, **extra: Any) -> dict[str, Any]:
        request = {"op": op, "trace_id": trace.trace_id, "token": lease.token, "g": trace.g, "phase": trace.phase}
        return self._call(node, {**request, **extra})

    def _steps(self, trace: TracePlan, j: journals.Journal, lease: Lease, outcome: TraceOutcome, state: State) -> Lease:
        for index, s in enumerate(trace.steps, 1):
            lease = self._renew(lease)
            node, action = s["node"], s["action"]
            self._tick(trace, node, action, index, finished=False)
            if action == "repair":
                result = self._op(trace, lease, "repair", node)
            elif action == "forward":
                try:
                    result = self._op(trace, lease, "forward", node)
                except DataSchemaError as exc:
                    j.add_step(self.clock(), node, "forward", "invalid", error=exc.message)
                    return self._validation_failed(trace, j, lease, outcome, exc.message)
            elif action == "settle":
                result = self._op(trace, lease, "settle", node, force=bool(s.get("force")))
            elif action == "compensate":
                self._over_budget(trace, j, s)
                result = {"outcome": "compensated", "timings": self._compensate(trace, j, lease, s)}
            elif action == "rollback":
                extra = {"abandon": list(s["abandon"])} if s.get("abandon") else {}
                result = self._op(
                    trace, lease, "rollback", node, reason=f"haios recovery {trace.trace_id}: {trace.reason}", **extra
                )
            else:
                raise UsageError(f"plan step {action!r} is unknown")
            j.add_step(
                self.clock(),
                node,
                action,
                str(result.get("outcome", "ok")),
                **({"key": s["key"]} if "key" in s else {}),
                **({"abandoned": list(s["abandon"])} if s.get("abandon") else {}),
                **({"timings": result["timings"]} if result.get("timings") else {}),
            )
            j.save(self.ctx.repo)  # after the node's checkpoint: the journal tells the story, the WAL decides
            outcome.steps += 1
            self._tick(trace, node, action, index, finished=True)
        return lease

    def _compensate(
        self, trace: TracePlan, j: journals.Journal, lease: Lease, s: dict[str, Any], *, retry: bool = False
    ) -> dict[str, float]:
        """One compensation under the SEL's rules: at most one success per key, back-off between
        attempts, the compensator's circuit breaker, the cost cap (SPEC §4.4). Returns where the
        time went (``sel_compensate``: the compensator itself; the node's record of it). With
        ``retry`` (the one more attempt a HARD_FAILED trace was granted) a failure leaves the trace's
        state alone: the caller decides what it makes of it."""
        node, key, name = s["node"], s["key"], s["compensator"]
        now = self.clock()
        try:
            entry = self.sel.register(
                key,
                compensator=name,
                kind=s.get("kind", ""),
                params=s.get("params") or {},
                node=node,
                trace_id=trace.trace_id,
                g=trace.g,
                phase=trace.phase,
            )
        except ParamsMismatch as exc:
            j.add_step(now, node, "compensate", "refused", key=key, error=exc.message)
            if retry:
                raise _Stop(3, exc.message) from None
            raise _Stop(3, exc.message, self._exhausted(j, now, f"{name} for {key} on {node}: {exc.message}")) from None
        admission = self.sel.admit(entry, now, self.run_id)
        if admission.replay:
            # succeeded before (a run killed after the call): the stored result, not a second call
            done = self._op(
                trace, lease, "compensated", node, key=key, result=entry.result, from_lamport=s.get("from_lamport")
            )
            return dict(done.get("timings") or {})
        if admission.exhausted:
            if retry:
                raise _Stop(3, f"compensator {name} for {key}: {admission.why}")
            due = self._exhausted(j, now, f"{name} for {key} on {node}: {admission.why}")
            raise _Stop(3, f"compensator {name} for {key}: {admission.why}: BLOCKED_COMPENSATOR", due)
        if not admission.run:
            self._mirror(j, entry, breaker=admission.why)
            raise _Stop(2, f"compensator {name} for {key} waits: {admission.why}", admission.until)
        pb = self.ctx.config.playbooks.get(name)
        started = time.perf_counter()
        if pb is None:
            ok, retryable, result = False, False, f"no playbook named {name!r} in playbooks/"
        else:
            ok, retryable, result = self._run_playbook(pb, _placeholders(s, trace, node), node)
        took = round(time.perf_counter() - started, 6)
        now = self.clock()
        run_cost = pb.cost if pb is not None else None
        if ok:
            entry = self.sel.succeeded(entry, now, result, run_cost)  # stored durably before it is reported
            self._mirror(j, entry)
            done = self._op(
                trace, lease, "compensated", node, key=key, result=result, from_lamport=s.get("from_lamport")
            )
            return {**(done.get("timings") or {}), "sel_compensate": took}
        entry = self.sel.failed(entry, now, str(result), retryable=retryable, probe=admission.probe, cost=run_cost)
        self._mirror(j, entry)
        j.add_step(
            now,
            node,
            "compensate",
            "failed",
            key=key,
            error=str(result),
            attempt=entry.failures,
            timings={"sel_compensate": took},
        )
        if retry:
            raise _Stop(3, f"compensator {name} for {key} failed: {result}")
        if entry.state == EXHAUSTED:
            why = "not retryable" if not retryable else f"failed {entry.failures} times"
            due = self._exhausted(j, now, f"{name} for {key} on {node} {why}: {result}")
            raise _Stop(3, f"compensator {name} for {key} {why}: BLOCKED_COMPENSATOR", due)
        state, _ = step(State(j.state), Event.COMPENSATOR_FAILED)
        j.set_state(state, now)
        raise _Stop(
            2,
            f"compensator {name} for {key} failed (attempt {entry.failures} of {self.t.sel_max_attempts}); "
            f"next attempt at {utc(entry.next_attempt_at or now)}",
            entry.next_attempt_at,
        )

    def _mirror(self, j: journals.Journal, entry: Entry, breaker: str | None = None) -> None:
        """The journal's summary of a key's retry state (what ``haios status`` shows)."""
        summary = {
            "attempts": entry.failures,
            "state": entry.state,
            "next_attempt_at": entry.next_attempt_at,
            "last_error": next((a.get("error") for a in reversed(entry.attempts) if a.get("error")), None),
        }
        if breaker:
            summary["waiting"] = breaker
        if j.compensation.get(entry.key) != summary:
            j.compensation[entry.key] = summary
            j.dirty = True

    def _exhausted(self, j: journals.Journal, now: float, message: str) -> float:
        """BLOCKED_COMPENSATOR, with its alert raised once; returns when T_blocked ends."""
        state = State(j.state)
        if state is not State.BLOCKED_COMPENSATOR:
            state, _ = step(state, Event.COMPENSATOR_EXHAUSTED)
        if j.blocked_since is None:
            j.blocked_since = now
        j.set_state(state, now, reason=message)
        if not any(a["alert"] == "sel_compensator_failed" for a in j.alerts):
            j.alert(now, "sel_compensator_failed", message)
        return j.blocked_since + self.t.t_blocked

    def _over_budget(self, trace: TracePlan, j: journals.Journal, s: dict[str, Any]) -> None:
        """The cost cap, with what the compensations so far cost and what the next one will: a run
        that would go over it does not start, and a human is asked."""
        pb = self.ctx.config.playbooks.get(s["compensator"])
        upcoming = (s["node"], f"compensation of {s['key']}", pb.cost) if pb is not None and pb.cost else None
        breach, cost = cost_breach(self.ctx, trace, self.sel, upcoming, next_steps=[s])
        j.set_cost(cost)
        if breach is None or j.grant is not None:  # a signed override is the human the cap asks for
            return
        now = self.clock()
        state, _ = step(State(j.state), Event.NEEDS_HUMAN)
        j.set_state(state, now, decision="needs_human", reason=breach)
        j.alert(now, COST_ALERT, breach, cost=cost)
        raise _Stop(3, breach)

    def _abort(self, trace: TracePlan, j: journals.Journal, lease: Lease, outcome: TraceOutcome) -> Lease:
        """A signed abort: ABORT_PHASE on every participant that has the phase open, nothing
        compensated (the side effects still owed are abandoned, and named), the barrier released."""
        now = self.clock()
        abandoned = sorted({k for s in trace.steps for k in s.get("abandon") or []})
        self.sel.abandon(abandoned, now)  # no compensator runs for these again
        lease = self._steps(trace, j, lease, outcome, State(j.state))
        state = State(j.state)
        if state is State.BLOCKED:
            state, _ = step(state, Event.HEALED)
        state, _ = step(state, Event.ACK_ABORT)
        left = f"; left uncompensated: {', '.join(abandoned)}" if abandoned else ""
        j.set_state(state, self.clock(), decision="abort", reason=f"{trace.reason}{left}")
        return lease

    def _validation_failed(
        self, trace: TracePlan, j: journals.Journal, lease: Lease, outcome: TraceOutcome, error: str
    ) -> Lease:
        """Replay found a file its schema rejects: roll back if nothing committed yet (SPEC §4.2)."""
        back = plan_transition(self.ctx, trace.g, trace.phase, trace.participants, force_rollback=error)
        if back.verdict == UNREADABLE:  # the rollback needs a file that cannot be used: wait for it
            raise _Stop(3, back.reason)
        if back.verdict != "rollback":
            state, _ = step(State(j.state), Event.NEEDS_HUMAN)
            j.set_state(state, self.clock(), decision="needs_human", reason=back.reason)
            j.alert(self.clock(), "awaiting_ack", back.reason)
            raise _Stop(3, back.reason)
        state, _ = step(State(j.state), Event.VALIDATION_FAILED)
        j.set_state(state, self.clock(), decision="rollback", reason=back.reason)
        outcome.verdict = "rollback"
        return self._steps(back, j, lease, outcome, state)

    def _retry(self, trace: TracePlan, j: journals.Journal, lease: Lease, outcome: TraceOutcome) -> Lease:
        """A signed resume on a HARD_FAILED trace: one more attempt for each compensation it abandoned,
        under the ledger's rules (a key that succeeded is not run again). A compensation that fails
        again is abandoned again; the trace is CLEAN_EXIT once none is left, else HARD_FAILED still."""
        failed: list[str] = []
        for index, s in enumerate(trace.steps, 1):
            lease = self._renew(lease)
            self._tick(trace, s["node"], "compensate", index, finished=False)
            try:
                timings = self._compensate(trace, j, lease, s, retry=True)
            except _Stop as stop:
                self.sel.abandon([s["key"]], self.clock())
                j.add_step(self.clock(), s["node"], "compensate", "abandoned again", key=s["key"], error=stop.note)
                failed.append(s["key"])
            else:
                j.add_step(self.clock(), s["node"], "compensate", "compensated", key=s["key"], timings=timings)
            outcome.steps += 1
            self._tick(trace, s["node"], "compensate", index, finished=True)
        now = self.clock()
        j.abandoned = [a for a in j.abandoned if a.get("key") in failed]
        if failed:
            j.set_state(State.HARD_FAILED, now, reason=f"one more attempt failed for {', '.join(failed)}")
            raise _Stop(3, f"HARD_FAILED: {', '.join(failed)} still uncompensated after one more attempt")
        j.set_state(State.CLEAN_EXIT, now, decision="rollback", reason=f"{trace.reason}: every one compensated")
        return lease

    def _begin(self, trace: TracePlan, node: str) -> int | None:
        """Where the node's attempt at the trace's (g, phase) begins in its WAL: how a later run finds
        that attempt's records once the node has moved past it."""
        o = self.ctx.observations.get(node)
        summary = o.phases.get((trace.g, trace.phase)) if o is not None else None
        return summary.begin_lamport if summary is not None else None

    def _hard_fail(
        self, trace: TracePlan, j: journals.Journal, lease: Lease, outcome: TraceOutcome, state: State
    ) -> Lease:
        """T_blocked passed: give up on the stuck side effects, abort everywhere, alert (SPEC §4.1)."""
        now = self.clock()
        owed: set[str] = set()
        for x in trace.steps:
            if x["action"] != "compensate":
                continue
            entry = self.sel.entry(x["key"])
            if entry is not None and entry.state == SUCCEEDED:
                # it did succeed (a run was killed before the node heard): record that, not a debt
                extra = {"key": x["key"], "result": entry.result, "from_lamport": x.get("from_lamport")}
                self._op(trace, lease, "compensated", x["node"], **extra)
            else:
                owed.add(x["key"])
        owed |= {k for k, v in j.compensation.items() if v.get("state") not in (SUCCEEDED, None)}
        stuck = sorted(owed)
        self.sel.abandon(stuck, now)
        # what a signed resume would run again (plan lists it with the override that does)
        keep = ("node", "key", "kind", "compensator", "params", "cost", "from_lamport")
        j.abandoned = [
            {k: x.get(k) for k in keep} | {"from_lamport": x.get("from_lamport") or self._begin(trace, x["node"])}
            for x in trace.steps
            if x["action"] == "compensate" and x["key"] in stuck
        ]
        for node in trace.participants:
            result = self._op(
                trace,
                lease,
                "rollback",
                node,
                reason=f"HARD_FAILED {trace.trace_id}: compensators failed for {self.t.t_blocked:.0f} s",
                abandon=stuck,
            )
            j.add_step(self.clock(), node, "rollback", str(result.get("outcome")), abandoned=stuck)
            outcome.steps += 1
        j.set_state(state, now, reason=f"compensation of {', '.join(stuck)} failed past T_blocked")
        j.alert(
            now,
            "compensator_timeout",
            f"g={trace.g} {trace.phase}: BLOCKED_COMPENSATOR for {self.t.t_blocked / 60:.0f} min; rolled back "
            f"without compensating {', '.join(stuck)}; the barrier is released",
        )
        raise _Stop(3, f"HARD_FAILED: {', '.join(stuck)} left uncompensated (alert raised)")


def node_state(ctx: Context, node: str) -> dict[str, Any] | None:
    """The node's state.txt as it is now, read through the transport (None: it has none)."""
    raw = ctx.transport.read_file(node, "state.txt")
    return controlfile.load_mapping(controlfile.decode(raw, node)) if raw is not None else None


def _status_file(ctx: Context) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for spec in ctx.config.cluster.nodes:
        try:
            body = node_state(ctx, spec.name)
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


def _write_status(ctx: Context) -> None:
    data = controlfile.dump_mapping(_status_file(ctx))
    path = ctx.repo / STATUS_FILE
    if path.exists() and path.read_bytes() == data:
        return
    makedirs_durable(path.parent)
    atomic_write(path, data)


def _publish_barrier(path: Path, ctx: Context, holder: str, now: float, moved: bool) -> dict[str, Any] | None:
    """Move the backend's barrier up to the last transition every member has committed, when every
    member can be read and none is in the middle of a phase (an unseen one might be behind); returns
    the barrier as it then stands. ``moved``: this run changed nodes, so their state is read again."""
    from ..coord import BarrierMoved

    seen = ctx.backend.barrier()
    positions = []
    for name in members.participants(path, ctx.config):
        obs = ctx.observations.get(name)
        if obs is None or not obs.reachable:
            return seen.as_dict()
        try:
            state = node_state(ctx, name) if moved else obs.state
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


def _message(
    outcomes: list[TraceOutcome],
    events: list[members.Event] | None = None,
    raised: list[alerts.Change] | None = None,
    placement: list[str] | None = None,
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


def reconcile(
    repo: Path | str,
    *,
    now: float | None = None,
    plan: Plan | None = None,
    holder: str | None = None,
    progress: Progress | None = None,
    push: bool = False,
    remote: str | None = None,
    parallelism: int = DEFAULT_PARALLEL,
    events: Sink | None = None,
    clock: Callable[[], float] | None = None,
    allow_dirty: bool = True,
) -> RunResult:
    """Plan and carry the plan out; with ``plan``, execute exactly that plan (refused if stale).

    A repo whose HEAD is detached is refused (an audit commit would be on no branch); so are
    uncommitted edits to tracked desired-state files unless ``allow_dirty`` (``haios reconcile``
    refuses them unless ``--allow-dirty``), which the result lists as ``uncommitted``.

    The run's clock is the wall clock; with ``now``, it starts at ``now`` and advances with the wall
    clock; with ``clock``, it is that callable alone (a simulator's or a test's virtual time).

    ``events`` is told of everything as it happens (:mod:`haios.events`: detections, every recovery
    step, state change and alert, each trace's outcome, the commit, the run's end). Every run,
    whatever its outcome, is added to this machine's run record (``status/observed/``) for the
    ``haios_reconcile_*`` metrics."""
    from ..metrics import record_run

    started = time.monotonic()
    code = 1
    emit = logged(events)
    try:
        if clock is None:
            clock = wall_clock(now)
        elif now is not None:
            raise UsageError("reconcile takes now or clock, not both")
        uncommitted = audit.require_committed(Path(repo), allow_dirty)
        result = _reconcile(Path(repo), clock, plan, holder, progress, push, remote, parallelism, emit)
        result.uncommitted = uncommitted
        code = result.exit_code()
        emit(make("run", exit_code=code, next_due=result.next_due, note=result.note or None))
        return result
    finally:
        if (Path(repo) / "haios.yaml").is_file():
            with contextlib.suppress(HaiosError):  # a metric that cannot be written never fails the run
                record_run(Path(repo), code=code, seconds=time.monotonic() - started, finished=time.time())


def _reconcile(
    path: Path,
    clock: Callable[[], float],
    plan: Plan | None,
    holder: str | None,
    progress: Progress | None,
    push: bool,
    remote: str | None,
    parallelism: int,
    emit: Sink,
) -> RunResult:
    fresh, ctx = build(path, now=clock(), parallelism=parallelism)
    try:
        return _execute(path, clock, fresh, ctx, plan, holder, progress, push, remote, emit)
    finally:
        close_transport(ctx.transport)  # opened by build for this run: its connections end with it


def close_transport(transport: object) -> None:
    """Close a transport that has a close() (an SSH one keeps connections open until then)."""
    closer = getattr(transport, "close", None)
    if closer is not None:
        closer()


def _execute(
    path: Path,
    clock: Callable[[], float],
    fresh: Plan,
    ctx: Context,
    plan: Plan | None,
    holder: str | None,
    progress: Progress | None,
    push: bool,
    remote: str | None,
    emit: Sink,
) -> RunResult:
    if plan is not None:
        stale = []
        if plan.desired_digest != fresh.desired_digest or plan.desired_commit != fresh.desired_commit:
            stale.append(
                f"the desired state changed (plan {(plan.desired_commit or '-')[:12]}, now {(fresh.desired_commit or '-')[:12]})"
            )
        if plan.observed_hash != fresh.observed_hash:
            stale.append("the cluster changed since the plan was made (observed hash differs)")
        if stale:
            raise HaiosError(
                f"refusing a stale plan: {'; '.join(stale)}",
                hint="make a new plan with 'haios plan --out FILE' and review it",
            )
    else:
        plan = fresh
    t = ctx.config.thresholds
    result = RunResult(plan, membership_due=ctx.membership.due(t.eviction_ttl, t.eviction_grace))
    for event in plan_events(plan, steps=False):
        emit(event)
    if plan.minority:
        result.note = (
            f"minority view: {len(plan.reachable)} of {len(plan.active)} active members reachable; nothing changed"
        )
        refused = [o["file"] for o in plan.overrides if o.get("effect") == "refused"]
        if refused:
            result.note += f"; overrides refused: {', '.join(refused)}"
        return result
    if plan.suspended:
        result.note = "the desired state says suspend: plan only, nothing changed"
        result.outcomes = [
            TraceOutcome(t.trace_id, t.g, t.phase, t.verdict, t.state, t.state, code=2 if t.actionable else 0)
            for t in plan.traces
        ]
        return result
    runner = _Runner(ctx, holder or new_holder(), clock, progress, plan.desired_commit, emit)
    blocked_at: tuple[int, int] | None = None
    for trace in sorted(plan.traces, key=lambda t: order(t.g, t.phase)):
        if blocked_at is not None and order(trace.g, trace.phase) > blocked_at and trace.actionable:
            # PHASE_ORDER_BARRIER: nothing after an unfinished transition moves
            result.outcomes.append(
                TraceOutcome(
                    trace.trace_id,
                    trace.g,
                    trace.phase,
                    trace.verdict,
                    trace.state,
                    trace.state,
                    code=2,
                    note="waits for an earlier transition (PHASE_ORDER_BARRIER)",
                )
            )
            continue
        outcome = runner.run(trace)
        result.outcomes.append(outcome)
        emit(
            make(
                "trace",
                outcome.trace_id,
                g=outcome.g,
                phase=outcome.phase,
                verdict=outcome.verdict,
                before=outcome.before,
                after=outcome.after,
                steps=outcome.steps,
                code=outcome.code,
                note=outcome.note or None,
                override=outcome.override,
            )
        )
        if State(outcome.after) not in TERMINAL and blocked_at is None:
            blocked_at = order(trace.g, trace.phase)
        if outcome.code == 4 and "fencing token" in outcome.note:
            break  # we are stale: stop touching anything
    changed = [o for o in result.outcomes if o.recorded]
    # a fenced or locked-out run publishes nothing; nor does one that cannot tell who is evicted
    if not any(o.code == 4 for o in result.outcomes) and MEMBERSHIP_FILE not in ctx.unreadable:
        result.barrier = _publish_barrier(path, ctx, runner.holder, clock(), bool(changed))
    paths = [
        JOURNAL_DIR,
        STATUS_FILE,
        SEL_DIR,
        MEMBERSHIP_FILE,
        str(Path(APPLIED_FILE).parent),
        ALERTS_DIR,
    ]
    events = ctx.membership.events
    if events:
        members.save(path, ctx.membership)
    from ..replication import placement

    if MEMBERSHIP_FILE not in ctx.unreadable and (
        ctx.config.cluster.replication.mode != "off" or (path / PLACEMENT_FILE).exists()
    ):
        placed = placement.sync(path, ctx.config, members.participants(path, ctx.config), ctx.transport, clock())
        result.placement = placed.lines()  # an origin still not told is said on every run...
        if placed.saved:  # ...but committed only when the placement file changes
            paths.append(PLACEMENT_FILE)
    raised = alerts.sync(path, clock())  # after the journals and membership: what holds now
    result.alerts = [c.as_dict() for c in raised]
    for c in raised:
        emit(make("alert", c.alert.trace_id, node=c.alert.node, **c.as_dict()))
    if changed or events or raised or PLACEMENT_FILE in paths:
        _write_status(ctx)
        subject, body = _message(result.outcomes, events, raised, result.placement)
        traces = [
            {
                "trace_id": o.trace_id,
                "result": o.after,
                "fencing_token": o.token or "-",
                "override": o.override["nonce"] if o.override else None,
            }
            for o in changed
        ]
        result.commit = audit.commit_run(path, paths, subject, body, traces, plan.observed_hash)
    if push and result.commit is not None:
        result.pushed_to = audit.push(path, remote)
    elif push:  # nothing new: still push what an earlier, rejected push left behind
        owed = audit.unpushed(path, remote)
        if owed is None or owed > 0:
            result.pushed_to = audit.push(path, remote)
            result.pushed_owed = owed or 0
    if result.commit is not None:
        emit(make("commit", commit=result.commit, pushed_to=result.pushed_to, traces=[o.trace_id for o in changed]))
    return result
