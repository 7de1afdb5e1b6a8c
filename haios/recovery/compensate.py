"""One compensation under the side-effect ledger (SPEC §4.3–4.4): admission (at most one success
per idempotency key, back-off between attempts, the compensator's circuit breaker), the cost cap,
the playbook run itself, and what its failure makes of the trace (a later attempt, or
BLOCKED_COMPENSATOR once the attempts are spent)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

from ..config.model import Playbook
from ..errors import EXIT_BLOCKED, EXIT_PENDING, ParamsMismatch, TransportError
from ..timefmt import utc
from . import journal as journals
from .cost import COST_ALERT, cost_breach
from .machine import Event
from .model import Context, TracePlan, TraceStop, Verdict
from .nodeops import NodeOps
from .sel import EXHAUSTED, Entry, SelStore

# in-run waits before retrying a transport error (never a compensator's own failure: that waits for a later run)
TRANSIENT_RETRIES = (0.2, 0.5, 1.0)


def placeholders(step_: dict[str, Any], trace: TracePlan, node: str) -> dict[str, str]:
    values = {k: str(v) for k, v in (step_.get("params") or {}).items()}
    # haios's own names win over parameters of the same name
    values.update(key=step_.get("key", ""), node=node, g=str(trace.g), phase=trace.phase)
    values.update(trace_id=trace.trace_id, kind=step_.get("kind", ""))
    return values


class Compensations:
    """The compensations of one reconcile run (``run_id``: the ledger's claim on a key while it runs)."""

    def __init__(self, ctx: Context, sel: SelStore, clock: Callable[[], float], run_id: str) -> None:
        self.ctx = ctx
        self.sel = sel
        self.clock = clock
        self.run_id = run_id
        self.t = ctx.config.thresholds

    def run_playbook(self, pb: Playbook, values: dict[str, str], node: str) -> tuple[bool, bool, Any]:
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

    def compensate(
        self, trace: TracePlan, j: journals.Journal, ops: NodeOps, s: dict[str, Any], *, retry: bool = False
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
                raise TraceStop(EXIT_BLOCKED, exc.message) from None
            raise TraceStop(
                EXIT_BLOCKED, exc.message, self.exhausted(j, now, f"{name} for {key} on {node}: {exc.message}")
            ) from None
        admission = self.sel.admit(entry, now, self.run_id)
        if admission.replay:
            # succeeded before (a run killed after the call): the stored result, not a second call
            done = ops.compensated(node, key=key, result=entry.result, from_lamport=s.get("from_lamport"))
            return dict(done.get("timings") or {})
        if admission.exhausted:
            if retry:
                raise TraceStop(EXIT_BLOCKED, f"compensator {name} for {key}: {admission.why}")
            due = self.exhausted(j, now, f"{name} for {key} on {node}: {admission.why}")
            raise TraceStop(EXIT_BLOCKED, f"compensator {name} for {key}: {admission.why}: BLOCKED_COMPENSATOR", due)
        if not admission.run:
            self.mirror(j, entry, breaker=admission.why)
            raise TraceStop(EXIT_PENDING, f"compensator {name} for {key} waits: {admission.why}", admission.until)
        pb = self.ctx.config.playbooks.get(name)
        started = time.perf_counter()
        if pb is None:
            ok, retryable, result = False, False, f"no playbook named {name!r} in playbooks/"
        else:
            ok, retryable, result = self.run_playbook(pb, placeholders(s, trace, node), node)
        took = round(time.perf_counter() - started, 6)
        now = self.clock()
        run_cost = pb.cost if pb is not None else None
        if ok:
            entry = self.sel.succeeded(entry, now, result, run_cost)  # stored durably before it is reported
            self.mirror(j, entry)
            done = ops.compensated(node, key=key, result=result, from_lamport=s.get("from_lamport"))
            return {**(done.get("timings") or {}), "sel_compensate": took}
        entry = self.sel.failed(entry, now, str(result), retryable=retryable, probe=admission.probe, cost=run_cost)
        self.mirror(j, entry)
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
            raise TraceStop(EXIT_BLOCKED, f"compensator {name} for {key} failed: {result}")
        if entry.state == EXHAUSTED:
            why = "not retryable" if not retryable else f"failed {entry.failures} times"
            due = self.exhausted(j, now, f"{name} for {key} on {node} {why}: {result}")
            raise TraceStop(EXIT_BLOCKED, f"compensator {name} for {key} {why}: BLOCKED_COMPENSATOR", due)
        journals.advance(j, Event.COMPENSATOR_FAILED, self.clock)
        raise TraceStop(
            EXIT_PENDING,
            f"compensator {name} for {key} failed (attempt {entry.failures} of {self.t.sel_max_attempts}); "
            f"next attempt at {utc(entry.next_attempt_at or now)}",
            entry.next_attempt_at,
        )

    def mirror(self, j: journals.Journal, entry: Entry, breaker: str | None = None) -> None:
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

    def exhausted(self, j: journals.Journal, now: float, message: str) -> float:
        """BLOCKED_COMPENSATOR, with its alert raised once; returns when T_blocked ends."""
        if j.blocked_since is None:
            j.blocked_since = now
        alert: tuple[str, str, dict[str, Any]] = ("sel_compensator_failed", message, {})
        journals.advance(j, Event.COMPENSATOR_EXHAUSTED, self.clock, reason=message, alert=alert, once=True)
        return j.blocked_since + self.t.t_blocked

    def over_budget(self, trace: TracePlan, j: journals.Journal, s: dict[str, Any]) -> None:
        """The cost cap, with what the compensations so far cost and what the next one will: a run
        that would go over it does not start, and a human is asked."""
        pb = self.ctx.config.playbooks.get(s["compensator"])
        upcoming = (s["node"], f"compensation of {s['key']}", pb.cost) if pb is not None and pb.cost else None
        breach, cost = cost_breach(self.ctx, trace, self.sel, upcoming, next_steps=[s])
        j.set_cost(cost)
        if breach is None or j.grant is not None:  # a signed override is the human the cap asks for
            return
        alert = (COST_ALERT, breach, {"cost": cost})
        journals.advance(j, Event.NEEDS_HUMAN, self.clock, decision=Verdict.NEEDS_HUMAN, reason=breach, alert=alert)
        raise TraceStop(EXIT_BLOCKED, breach)
