"""One transition at a time: which transitions need a decision (:func:`candidates`), what each
participant holds of it (its view, read with ``inspect``), which trace it belongs to, and the
decision with the steps that carry it out (:func:`assess` → :class:`TracePlan`).

The decision itself is :func:`haios.recovery.planner.decide`, a pure function; around it this module
adds what needs the repo: the trace's journal and identity, a signed override (:mod:`.grant`), the
settling of a state.txt that missed an end record, the cost cap (:mod:`.cost`), and the files a
transition needs that cannot be used now (it then waits, untouched, and nothing else does).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..budget import FX_FILE, trace_cost
from ..config.model import PhasePolicy
from ..config.model import phase_order as order
from ..detect.detectors import NodeObservation, PhaseSummary, forgotten, position, unrecorded_ends
from ..errors import ConfigError, HaiosError, UnknownCurrency, WalCorruptError
from ..layout import BREAKERS_FILE, MEMBERSHIP_FILE, SWINGS_FILE
from ..node.heartbeat import gossip_partitioned
from ..node.transaction import crash_window, next_transition
from ..untrusted import in_repo
from ..wal.phases import COMMAND_STEP, INTERNAL_STEP
from . import journal as journals
from .cost import BUDGET_FILE, COST_ALERT, cost_breach, region_of
from .grant import overridden
from .machine import Event, State
from .model import ACTIONABLE, Context, StepAction, TracePlan, Verdict
from .nodeops import inspect
from .planner import Decision, Inputs, View, decide, steps_for
from .sel import SelStore


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
    from_lamport: int | None = None
    try:
        owed = [e for e in (o.state or {}).get("uncompensated") or [] if (e["g"], e["phase"]) == (g, phase)]
        if owed:
            from_lamport = owed[-1]["begin_lamport"]  # the aborted attempt that owes compensation
        elif summary is not None and summary.ended == "ABORT_PHASE" and summary.uncompensated:
            from_lamport = summary.begin_lamport  # it ended: it lies before the WAL's tail
        info = inspect(ctx.transport, node, g, phase, from_lamport=from_lamport)
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
            from_lamport=from_lamport,
            command=command if isinstance(command := (info.get("steps") or {}).get(COMMAND_STEP), dict) else None,
            steps_done=tuple(str(k) for k in info.get("steps") or {} if not str(k).startswith(INTERNAL_STEP)),
        ),
        info,
    )


def _views(
    ctx: Context, g: int, phase: str, participants: list[str]
) -> tuple[dict[str, View], dict[str, dict[str, Any]]]:
    """Each participant's view of (g, phase), and what ``inspect`` answered where it was asked."""
    views: dict[str, View] = {}
    infos: dict[str, dict[str, Any]] = {}
    for node in participants:
        o = ctx.observations.get(node)
        summary = o.phases.get((g, phase)) if o is not None else None
        views[node], info = _view(ctx, node, g, phase, summary)
        if info:
            infos[node] = info
    return views, infos


def _trace_identity(
    ctx: Context, g: int, phase: str, infos: dict[str, dict[str, Any]]
) -> tuple[str, journals.Journal | None, int]:
    """The trace to continue (from the nodes' RECOVERY records or an open journal), or a new id;
    also how many automatic rollbacks of (g, phase) already finished (flapping, SPEC §4.5)."""
    history = journals.journals_for(ctx.repo, g, phase)
    by_id = {j.trace_id: j for j in history}
    finished_rollbacks = sum(1 for j in history if j.terminal and j.decision == Verdict.ROLLBACK)
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


def assess(
    ctx: Context,
    g: int,
    phase: str,
    participants: list[str],
    *,
    resume_attempts: int | None = None,
    force_rollback: str | None = None,
) -> TracePlan:
    """Views, identity and decision for one transition (``force_rollback``: why it must be rolled back
    whatever the rule says — a replay that failed validation, a rejoin, a coordinator that went on
    without the participants)."""
    if force_rollback is None:
        behind = _committed_without(ctx, g, phase, participants)
        if behind:
            # the coordinator aborted their attempt and committed the transition with the others: only
            # their own attempt is left — rolled back on them alone while it is open, its side effects
            # compensated if it was aborted owing some, else nothing to do (rejoin catches them up)
            left, committed_by, still_open = behind
            why = (
                f"(g={g}, {phase}) was committed without {', '.join(left)} by {', '.join(committed_by)}: "
                f"the attempt {'they' if len(left) > 1 else 'it'} began was aborted by the others"
            )
            if still_open:
                return assess(ctx, g, phase, left, resume_attempts=resume_attempts, force_rollback=why)
            return assess(ctx, g, phase, left, resume_attempts=resume_attempts)
    views, infos = _views(ctx, g, phase, participants)
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
            decision = Decision(
                Verdict.NEEDS_HUMAN, Event.NEEDS_HUMAN, f"cannot roll back after commits: {force_rollback}"
            )
        else:
            decision = Decision(Verdict.ROLLBACK, Event.ROLL_BACK, force_rollback)
    override = None
    if force_rollback is None:  # (replay failing validation is no time for a human's earlier word)
        override, decision = overridden(ctx, trace_id, journal, state, views, inputs, decision, infos)
    granted = override is not None and override["effect"] in ("applies", "continuing")
    if state is State.ROLLBACK and decision.verdict is Verdict.FORWARD:
        # a rollback that began (side effects compensated) must finish as a rollback
        decision = Decision(Verdict.ROLLBACK, decision.event, "continuing the rollback this trace began")
    settling, decision = _settle(ctx, g, phase, participants, decision, granted)
    if state is State.AWAITING_ACK and decision.verdict in ACTIONABLE and not granted:
        decision = Decision(
            Verdict.NEEDS_HUMAN, None, f"awaiting a signed override ({journal.reason if journal else ''})"
        )
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
    trace.last_activity = _last_activity(ctx, g, phase, participants)
    return _checked(ctx, trace, state, granted)


def _committed_without(
    ctx: Context, g: int, phase: str, participants: list[str]
) -> tuple[list[str], list[str], bool] | None:
    """The participants left out of (g, phase): every other participant committed an attempt that
    did not include them (a coordinator that went on without a member that failed to prepare),
    and theirs is another attempt, still open or aborted. Returns them, those others, and whether
    one of their attempts is still open; None when that is not the case."""
    summaries = {
        n: s for n in participants if (o := ctx.observations.get(n)) is not None and (s := o.phases.get((g, phase)))
    }
    committed = {n: s for n, s in summaries.items() if s.ended == "COMMIT_PHASE"}
    left = [n for n, s in summaries.items() if s.ended != "COMMIT_PHASE"]
    if not committed or not left or len(summaries) != len(participants):
        return None
    if any(n in s.participants for n in left for s in committed.values()):
        return None  # one of the committed attempts included them: a commit they must follow
    if any(summaries[n].trace_id in {s.trace_id for s in committed.values()} for n in left):
        return None
    return left, sorted(committed), any(summaries[n].ended is None for n in left)


def _last_activity(ctx: Context, g: int, phase: str, participants: list[str]) -> float | None:
    """The transition's last sign of life on any participant (what detection latency is measured from)."""
    seen = [
        s.last_ts if s.last_ts is not None else s.begin_ts
        for n in participants
        if (o := ctx.observations.get(n)) is not None and (s := o.phases.get((g, phase))) is not None
    ]
    return max(seen) if seen else None


def _checked(ctx: Context, trace: TracePlan, state: State, granted: bool) -> TracePlan:
    """The trace as it may go: waiting, untouched, while a file it needs cannot be used, and asking a
    human when its rollback would break the cost cap (unless a signed override already is that human)."""
    unusable = _unusable(ctx, trace)
    if unusable:  # a file it needs cannot be used: it waits, untouched, and nothing else does
        trace.verdict, trace.steps = Verdict.UNREADABLE, []
        trace.reason = f"needs {'; '.join(unusable)}"
        if trace.override is not None and trace.override["effect"] in ("applies", "continuing"):
            trace.override.update(effect="waiting", why=trace.reason)
        return trace
    if trace.spent and not ctx.config.blocking(BUDGET_FILE):
        breach, trace.cost = cost_breach(ctx, trace, SelStore(ctx.repo, ctx.config.thresholds))
        if (
            breach is not None
            and trace.verdict is Verdict.ROLLBACK
            and state is not State.BLOCKED_COMPENSATOR
            and not granted
        ):
            trace.verdict, trace.reason, trace.steps = Verdict.NEEDS_HUMAN, breach, []
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
                "action": StepAction.SETTLE.value,
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
        return [], Decision(Verdict.NEEDS_HUMAN, Event.NEEDS_HUMAN, why)
    if decision.verdict is Verdict.NOTHING:
        verdict = Verdict.FORWARD if {s["ended"] for s in steps} == {"COMMIT_PHASE"} else Verdict.ROLLBACK
        event = Event.ROLL_FORWARD if verdict is Verdict.FORWARD else Event.ROLL_BACK
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
    compensations = [s for s in trace.steps if s["action"] == StepAction.COMPENSATE]
    books = [s["compensator"] for s in compensations]
    books += [s["playbook"] for s in trace.steps if s["action"] == StepAction.RESUME and s.get("playbook")]
    for name in books:
        why += config.playbook_blocking(str(name))
    if compensations:
        why += config.blocking(BUDGET_FILE)
        if not config.blocking(BUDGET_FILE) and config.blocking(FX_FILE):
            costs = [(region_of(ctx, e["node"]), "", e.get("cost")) for e in trace.spent]
            costs += [
                (region_of(ctx, s["node"]), "", pb.cost)
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
