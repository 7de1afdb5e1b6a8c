"""What a signed override (SPEC §5) means for a trace, and applying it.

An override names a trace and an action: ``resume`` (try again, lifting the flapping limit and a hold
policy), ``force-rollback`` or ``abort``. :func:`overridden` works out the decision under it and its
*effect* — applies, continuing (a grant in the journal being carried out), waiting, not applicable,
refused (a replay the nodes' WALs remember). :func:`apply` takes it: verified again by the run's
clock, the grant written into the journal, then the nonce onto every participant's WAL and into
``status/overrides/applied.yaml``, never twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import EXIT_BLOCKED, ConfigError
from ..layout import JOURNAL_DIR
from ..overrides import apply as overrides
from ..overrides.apply import Offer
from ..overrides.verify import applied
from ..timefmt import utc
from ..wal.phases import OVERRIDE_STEP
from . import journal as journals
from .machine import Event, State
from .model import Context, Plan, StepAction, TracePlan, TraceStop, Verdict
from .nodeops import NodeOps
from .planner import Decision, Inputs, View, decide
from .sel import SUCCEEDED, SelStore


def under_override(
    action: str, views: dict[str, View], inputs: Inputs, base: Decision, state: State, label: str, fresh: bool
) -> tuple[Decision | None, str, str]:
    """What a signed override makes of a trace: the decision (None: it cannot act now), its effect
    (applies, waiting, not applicable) and why."""
    corrupt = sorted(n for n, v in views.items() if v.status == "corrupt")
    if corrupt:
        why = f"the WAL of {', '.join(corrupt)} is corrupt mid-log: repair it first ('haios wal repair')"
        return None, "not applicable", why
    if base.verdict is Verdict.BLOCKED:
        return None, "waiting", base.reason
    committed = sorted(n for n, v in views.items() if v.status == "committed")
    if action == "resume":
        if (
            fresh
            and state not in (State.AWAITING_ACK, State.BLOCKED_COMPENSATOR)
            and base.verdict is not Verdict.NEEDS_HUMAN
        ):
            return None, "not applicable", f"the trace is {state.value} and does not wait for a human"
        policy = inputs.policy
        lifted = replace(
            inputs,
            rollbacks_so_far=0,  # flapping: one more attempt
            policy=replace(policy, on_partial="auto") if policy.on_partial == "hold" else policy,
        )
        again = decide(views, lifted)
        if again.verdict is Verdict.NEEDS_HUMAN:
            return None, "not applicable", f"a resume cannot help: {again.reason}"
        if again.verdict is Verdict.WAIT:
            return None, "waiting", again.reason
        if again.verdict is Verdict.NOTHING:
            # resolved meanwhile (by hand, by its executor): the override closes the trace, no step to run
            verdict, event = (Verdict.FORWARD, Event.ROLL_FORWARD) if committed else (Verdict.ROLLBACK, Event.ROLL_BACK)
            return Decision(verdict, event, f"{label}: {again.reason}; closing the trace"), "applies", ""
        return Decision(again.verdict, again.event, f"{label}: {again.reason}", again.wait_until), "applies", ""
    if committed:
        return None, "not applicable", f"committed on {', '.join(committed)}: a committed phase cannot be undone"
    if action == "force-rollback":
        return Decision(Verdict.ROLLBACK, Event.ACK_ROLLBACK, f"{label}: roll back, compensating first"), "applies", ""
    return (
        Decision(Verdict.ABORT, Event.ACK_ABORT, f"{label}: ABORT_PHASE everywhere, side effects left uncompensated"),
        "applies",
        "",
    )


def overridden(
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
    decision, effect, why = under_override(str(info["action"]), views, inputs, base, state, label, fresh=grant is None)
    if grant is not None and effect == "applies":
        effect = "continuing"
    info.update(effect=effect, why=why)
    return info, decision if decision is not None else base


def retry_abandoned(ctx: Context, store: SelStore, j: journals.Journal) -> TracePlan | dict[str, Any]:
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
            "action": StepAction.COMPENSATE.value,
            "detail": f"{a.get('compensator')} for {a.get('kind')}: one more attempt (abandoned by HARD_FAILED)",
        }
        for a in owed
    ]
    return TracePlan(
        j.trace_id,
        j.g,
        j.phase,
        j.state,
        Verdict.RETRY,
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


def override_effects(repo: Path, plan: Plan, offers: list[Offer]) -> list[dict[str, Any]]:
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


def apply(
    ctx: Context,
    sel: SelStore,
    clock: Callable[[], float],
    trace: TracePlan,
    j: journals.Journal,
    ops: NodeOps,
    desired_commit: str | None,
) -> None:
    """Take the trace's signed override: verified again by this run's clock, the grant written
    into the journal, then the nonce onto every participant's WAL and into
    status/overrides/applied.yaml (SPEC §5: never twice). A run killed between these steps finds
    the grant in the journal and only finishes the record."""
    assert trace.override is not None
    file, nonce = str(trace.override["file"]), str(trace.override["nonce"])
    now = clock()
    entry = next((o for o in j.overrides if o.get("nonce") == nonce), None)
    if entry is None:
        offer = overrides.judge(ctx.config, ctx.repo / file, now)
        if offer.nonce != nonce:
            raise TraceStop(EXIT_BLOCKED, f"override {file} changed since it was planned; not applied")
        if offer.state != "valid":
            raise TraceStop(EXIT_BLOCKED, f"override {file} not applied: {offer.state}: {offer.why}")
        action = str(offer.action)
        entry = {
            "file": file,
            "action": action,
            "nonce": nonce,
            "payload_sha256": offer.payload_sha256,
            "policy_version": offer.policy_version,
            "signers": offer.signers,
            "applied_at": utc(now),
            "fencing_token": ops.token,
        }
        j.overrides.append(entry)
        before = State(j.state)
        # the human's word moves the state (the work is done by the roll-back or forward that follows)
        if before is State.BLOCKED:
            journals.advance(j, Event.HEALED, clock, reason=trace.reason)
        if action == "resume" and before in (State.AWAITING_ACK, State.BLOCKED_COMPENSATOR):
            journals.advance(j, Event.ACK_RESUME, clock, reason=trace.reason)
        elif action == "force-rollback":
            journals.advance(j, Event.ACK_ROLLBACK, clock, reason=trace.reason)
        reopened: list[str] = []
        keys = [s["key"] for s in trace.steps if s["action"] == StepAction.COMPENSATE]
        if action != "abort" and before is State.BLOCKED_COMPENSATOR:
            # one more attempt for every compensator that ran out of them
            reopened = sel.reopen(keys, now, nonce)
            j.blocked_since = None
        elif action == "resume" and before is State.HARD_FAILED:
            # one more attempt for every compensation the trace abandoned
            reopened = sel.reopen(keys, now, nonce, abandoned=True)
        j.set_state(State(j.state), now, reason=trace.reason)
        j.grant = {"file": file, "action": action, "nonce": nonce, "signers": offer.signers}
        detail = {"reopened": reopened} if reopened else {}
        j.add_step(now, None, "override", "applied", override=action, nonce=nonce, signers=offer.signers, **detail)
        j.save(ctx.repo)  # the grant is durable before the nonce is marked used
    if nonce not in applied(ctx.repo)["nonces"]:
        for node in trace.participants:
            # each participant's WAL keeps the nonce too: a replay is refused even if status/ is lost
            mark = {"nonce": nonce, "action": entry["action"], "payload_sha256": entry["payload_sha256"]}
            ops.checkpoint(node, step=OVERRIDE_STEP, outcome=mark)
        overrides.record(ctx.repo, trace.trace_id, entry, desired_commit=desired_commit)
