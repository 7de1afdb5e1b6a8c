"""``haios reconcile``: plan, refuse a stale plan, run every trace in transition order through the
trace runner (:mod:`haios.recovery.trace`) behind the PHASE_ORDER_BARRIER — traces of independent
transitions at once (:func:`independent`, ``recovery.parallel_traces``) — then finish the run
(:mod:`.finish`: barrier, membership, placement, alerts, the audit commit and push)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from ..audit import Recorder
from ..clock import wall_clock
from ..config.model import phase_order as order
from ..coord import Backend, new_holder
from ..errors import EXIT_ERROR, EXIT_LOCKED, EXIT_PENDING, HaiosError, UsageError
from ..events import Sink, logged, make
from ..metrics import record_run
from ..recovery.machine import TERMINAL, State
from ..recovery.model import Context, Plan, RunResult, TraceOutcome, TracePlan
from ..recovery.trace import Progress, TraceRunner
from ..transport import DEFAULT_PARALLEL, Transport
from . import policy as policies
from .context import open_context
from .finish import finish, push_audit
from .plan import plan_events, plan_from


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
    transport: Transport | None = None,
    backend: Backend | None = None,
    recorder: Recorder | None = None,
) -> RunResult:
    """Plan and carry the plan out; with ``plan``, execute exactly that plan (refused if stale).

    A repo whose HEAD is detached is refused (an audit commit would be on no branch); so are
    uncommitted edits to tracked desired-state files unless ``allow_dirty`` (``haios reconcile``
    refuses them unless ``--allow-dirty``), which the result lists as ``uncommitted``.

    The run's clock is the wall clock; with ``now``, it starts at ``now`` and advances with the wall
    clock; with ``clock``, it is that callable alone (a simulator's or a test's virtual time).
    ``transport``, ``backend`` and ``recorder``: use these instead of the ones haios.yaml names and
    git (a transport given is left open); with a mock transport, an in-memory backend and an
    in-memory recorder a run starts no process at all.

    ``events`` is told of everything as it happens (:mod:`haios.events`: detections, every recovery
    step, state change and alert, each trace's outcome, the commit, the run's end). Every run,
    whatever its outcome, is added to this machine's run record (``status/observed/``) for the
    ``haios_reconcile_*`` metrics."""
    started = time.monotonic()
    code = EXIT_ERROR
    emit = logged(events)
    try:
        if clock is None:
            clock = wall_clock(now)
        elif now is not None:
            raise UsageError("reconcile takes now or clock, not both")
        opened = open_context(repo, transport=transport, backend=backend, clock=clock, recorder=recorder)
        try:
            uncommitted = opened.recorder.require_committed(allow_dirty)
            fresh, ctx = plan_from(opened, clock(), parallelism)
            result = _execute(ctx, clock, fresh, plan, holder or new_holder(), progress, emit)
            if result.holder is not None:  # the traces ran (not a minority view, not suspended)
                finish(ctx, result, result.holder, clock, emit, opened.recorder, push=push, remote=remote)
            elif result.policy:  # suspended: the policy that says so went out, and is recorded
                policies.commit_alone(ctx, result, opened.recorder)
                push_audit(result, opened.recorder, push, remote)
                if result.commit is not None:
                    emit(make("commit", commit=result.commit, pushed_to=result.pushed_to, traces=[]))
        finally:
            opened.close()  # a transport opened for this run: its connections end with it
        result.uncommitted = uncommitted
        code = result.exit_code()
        emit(make("run", exit_code=code, next_due=result.next_due, note=result.note or None))
        return result
    finally:
        if (Path(repo) / "haios.yaml").is_file():
            with contextlib.suppress(HaiosError):  # a metric that cannot be written never fails the run
                record_run(Path(repo), code=code, seconds=time.monotonic() - started, finished=time.time())


def refuse_stale(plan: Plan, fresh: Plan) -> None:
    """A plan made earlier is executed only while it still describes the desired state and the cluster."""
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


def _execute(
    ctx: Context,
    clock: Callable[[], float],
    fresh: Plan,
    plan: Plan | None,
    holder: str,
    progress: Progress | None,
    emit: Sink,
) -> RunResult:
    if plan is not None:
        refuse_stale(plan, fresh)
    else:
        plan = fresh
    t = ctx.config.thresholds
    result = RunResult(plan, membership_due=ctx.membership.due(t.eviction_ttl, t.eviction_grace, t.partition_window))
    for event in plan_events(plan, steps=False):
        emit(event)
    # the desired state reaches the members first: a freeze or a suspension holds before anything moves
    result.policy = policies.push(ctx, plan, clock, emit, holder)
    if plan.minority:
        result.note = (
            f"minority view: {len(plan.reachable)} of {len(plan.active)} active members reachable; nothing changed"
        )
        refused = [o["file"] for o in plan.overrides if o.get("effect") == "refused"]
        if refused:
            result.note += f"; overrides refused: {', '.join(refused)}"
        return result
    if plan.suspended:
        pushed = sum(1 for p in result.policy if p["outcome"] == "pushed")
        result.note = "the desired state says suspend: plan only, " + (
            f"nothing changed but the policy, pushed to {pushed} member(s) so that they refuse BEGIN too"
            if pushed
            else "nothing changed"
        )
        result.outcomes = [_untouched(tp, EXIT_PENDING if tp.actionable else 0) for tp in plan.traces]
        return result
    # the traces that run at once share the event stream, the progress bars and the backend (one
    # call at a time: a lease is a compare-and-swap of one ref or key, quickly done)
    lock = threading.Lock()
    emit = _serialized(emit, lock)
    shared = replace(ctx, backend=cast(Backend, _OneAtATime(ctx.backend)))
    runner = TraceRunner(shared, holder, clock, _serialized(progress, lock), plan.desired_commit, emit)
    result.holder = runner.holder
    _run_in_order(runner, plan, result, emit, ctx.config.thresholds.parallel_traces)
    return result


class _OneAtATime:
    """A backend whose methods run one at a time, whichever thread calls them."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._backend, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return found(*args, **kwargs)

        return call


def _serialized(sink: Callable[[dict[str, Any]], None] | None, lock: threading.Lock) -> Any:
    if sink is None:
        return None

    def tell(event: dict[str, Any]) -> None:
        with lock:
            sink(event)

    return tell


def _untouched(trace: TracePlan, code: int, note: str = "") -> TraceOutcome:
    return TraceOutcome(
        trace.trace_id, trace.g, trace.phase, trace.verdict, trace.state, trace.state, code=code, note=note
    )


def independent(a: TracePlan, b: TracePlan) -> bool:
    """Whether either transition can be recovered without waiting for the other: they are of
    different shards (each runs under its own lease) and have no participant in common (neither
    writes to a node the other does, and no node orders one after the other)."""
    return a.shard != b.shard and not set(a.participants) & set(b.participants)


def _run_in_order(runner: TraceRunner, plan: Plan, result: RunResult, emit: Sink, parallel: int) -> None:
    """Every trace in transition order: a trace waits for each earlier one it is not independent of,
    and nothing moves after one of those that did not finish (PHASE_ORDER_BARRIER). Independent
    traces run at once, at most ``parallel``; the outcomes are listed in transition order. A run
    found stale (a fencing token refused) starts nothing more."""
    traces = sorted(plan.traces, key=lambda t: order(t.g, t.phase))
    futures: list[Future[TraceOutcome | None]] = []
    stale = threading.Event()

    def one(i: int) -> TraceOutcome | None:
        trace = traces[i]
        before = [f.result() for j, f in enumerate(futures[:i]) if not independent(traces[j], trace)]
        if stale.is_set():
            return None  # we are stale: stop touching anything
        blocked = any(o is not None and State(o.after) not in TERMINAL for o in before)
        if blocked and trace.actionable:
            return _untouched(trace, EXIT_PENDING, "waits for an earlier transition (PHASE_ORDER_BARRIER)")
        outcome = runner.run(trace)
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
        if outcome.code == EXIT_LOCKED and "fencing token" in outcome.note:
            stale.set()
        return outcome

    # tasks start in the order they are handed in, and each waits only for earlier ones: the
    # earliest unfinished task is always running, so a full pool never waits on itself
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="haios-trace") as pool:
        for i in range(len(traces)):
            futures.append(pool.submit(one, i))
        done = [f.result() for f in futures]
    result.outcomes.extend(o for o in done if o is not None)
