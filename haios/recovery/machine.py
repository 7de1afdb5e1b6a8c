"""The per-trace recovery state machine (SPEC §4.1), pure: ``step(state, event) -> (state, actions)``.

::

    INTERRUPTED ─┬─► RECONCILE (roll forward) ─► CLEAN_EXIT
                 └─► ROLLBACK (compensation, then snapshot restore) ─► CLEAN_EXIT
    BLOCKED (partition: waits for heal, not FAILED)
    BLOCKED_COMPENSATOR ─(T_blocked)─► HARD_FAILED (releases the barrier, alert)
    AWAITING_ACK (flapping, corrupt WAL, hold policy, cost cap: needs a signed override)
    ABORTED (a signed abort override: ABORT_PHASE everywhere, nothing compensated, the barrier released)
    HARD_FAILED ─(signed resume: its abandoned compensations once more, all succeed)─► CLEAN_EXIT

The whole transition table is :data:`TABLE`; anything not in it is a bug and raises
:class:`InvalidTransition`. Actions name what the trace runner must do next, in order
(:func:`haios.recovery.journal.advance` carries them out); a signed override's ACK event only
records the human's word, and the roll-back it allows does the work.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import InvalidTransition


class State(StrEnum):
    INTERRUPTED = "INTERRUPTED"
    RECONCILE = "RECONCILE"
    ROLLBACK = "ROLLBACK"
    CLEAN_EXIT = "CLEAN_EXIT"
    BLOCKED = "BLOCKED"
    BLOCKED_COMPENSATOR = "BLOCKED_COMPENSATOR"
    HARD_FAILED = "HARD_FAILED"
    AWAITING_ACK = "AWAITING_ACK"
    ABORTED = "ABORTED"


class Event(StrEnum):
    ROLL_FORWARD = "roll_forward"  # the planner: every uncommitted participant has PREPARE
    ROLL_BACK = "roll_back"  # the planner: a participant lacks PREPARE and the Φ timeout expired
    RESUME = "resume"  # the planner: on_partial resume, run the phase's resume hook
    PARTITIONED = "partitioned"  # a participant is unreachable or PARTITIONED
    HEALED = "healed"  # every participant is reachable again
    NEEDS_HUMAN = "needs_human"  # corrupt WAL mid-log, hold policy, flapping, cost cap
    ACK_RESUME = "ack_resume"  # a signed override: try again automatically
    ACK_ROLLBACK = "ack_rollback"  # a signed override: force a rollback
    ACK_ABORT = "ack_abort"  # a signed override: the trace stopped, ABORT_PHASE everywhere without compensation
    VALIDATION_FAILED = "validation_failed"  # replay found a file its schema rejects
    COMPENSATOR_FAILED = "compensator_failed"  # one compensation failed; retried by a later run
    COMPENSATOR_EXHAUSTED = "compensator_exhausted"  # failed past the attempt limit
    T_BLOCKED_EXPIRED = "t_blocked_expired"  # BLOCKED_COMPENSATOR for longer than T_blocked
    DONE = "done"  # every participant committed (RECONCILE) or aborted (ROLLBACK)


class Action(StrEnum):
    REPLAY_AND_COMMIT = "replay_and_commit"
    COMPENSATE = "compensate"
    RESTORE_AND_ABORT = "restore_and_abort"
    RUN_RESUME_HOOK = "run_resume_hook"
    ABANDON_AND_ABORT = "abandon_and_abort"  # HARD_FAILED: abort, leaving the stuck side effect
    ALERT = "alert"
    RELEASE_BARRIER = "release_barrier"
    WAIT = "wait"


WORK = frozenset(
    {
        Action.REPLAY_AND_COMMIT,
        Action.COMPENSATE,
        Action.RESTORE_AND_ABORT,
        Action.RUN_RESUME_HOOK,
        Action.ABANDON_AND_ABORT,
    }
)
"""Actions that change nodes (the rest — ALERT, RELEASE_BARRIER, WAIT — are bookkeeping)."""

TERMINAL = frozenset({State.CLEAN_EXIT, State.HARD_FAILED, State.ABORTED})
NEEDS_A_HUMAN = frozenset({State.AWAITING_ACK, State.BLOCKED_COMPENSATOR, State.HARD_FAILED})
"""States that make reconcile exit 3 (SPEC §10)."""

_S, _E, _A = State, Event, Action
_FORWARD = (_A.REPLAY_AND_COMMIT,)
_BACK = (_A.COMPENSATE, _A.RESTORE_AND_ABORT)
TABLE: dict[tuple[State, Event], tuple[State, tuple[Action, ...]]] = {
    (_S.INTERRUPTED, _E.ROLL_FORWARD): (_S.RECONCILE, _FORWARD),
    (_S.INTERRUPTED, _E.ROLL_BACK): (_S.ROLLBACK, _BACK),
    (_S.INTERRUPTED, _E.RESUME): (_S.INTERRUPTED, (_A.RUN_RESUME_HOOK,)),
    (_S.INTERRUPTED, _E.PARTITIONED): (_S.BLOCKED, (_A.WAIT,)),
    (_S.INTERRUPTED, _E.NEEDS_HUMAN): (_S.AWAITING_ACK, (_A.ALERT,)),
    (_S.INTERRUPTED, _E.DONE): (_S.CLEAN_EXIT, ()),  # resolved without us (the coordinator finished it)
    (_S.RECONCILE, _E.ROLL_FORWARD): (_S.RECONCILE, _FORWARD),  # resumed after a crash
    (_S.RECONCILE, _E.DONE): (_S.CLEAN_EXIT, ()),
    (_S.RECONCILE, _E.VALIDATION_FAILED): (_S.ROLLBACK, _BACK),
    (_S.RECONCILE, _E.ROLL_BACK): (_S.ROLLBACK, _BACK),  # nothing committed yet, and the rule now says back
    (_S.RECONCILE, _E.PARTITIONED): (_S.BLOCKED, (_A.WAIT,)),
    (_S.RECONCILE, _E.NEEDS_HUMAN): (_S.AWAITING_ACK, (_A.ALERT,)),
    (_S.ROLLBACK, _E.ROLL_BACK): (_S.ROLLBACK, _BACK),  # resumed after a crash or a failed compensator
    (_S.ROLLBACK, _E.DONE): (_S.CLEAN_EXIT, ()),
    (_S.ROLLBACK, _E.COMPENSATOR_FAILED): (_S.ROLLBACK, (_A.WAIT,)),
    (_S.ROLLBACK, _E.COMPENSATOR_EXHAUSTED): (_S.BLOCKED_COMPENSATOR, (_A.ALERT,)),
    (_S.ROLLBACK, _E.PARTITIONED): (_S.BLOCKED, (_A.WAIT,)),
    (_S.ROLLBACK, _E.NEEDS_HUMAN): (_S.AWAITING_ACK, (_A.ALERT,)),
    (_S.BLOCKED, _E.PARTITIONED): (_S.BLOCKED, (_A.WAIT,)),
    (_S.BLOCKED, _E.HEALED): (_S.INTERRUPTED, ()),
    (_S.BLOCKED, _E.DONE): (_S.CLEAN_EXIT, ()),  # resolved while we waited
    (_S.BLOCKED, _E.NEEDS_HUMAN): (_S.AWAITING_ACK, (_A.ALERT,)),
    (_S.BLOCKED_COMPENSATOR, _E.ROLL_BACK): (_S.ROLLBACK, _BACK),  # the compensator's breaker closed again
    (_S.BLOCKED_COMPENSATOR, _E.COMPENSATOR_FAILED): (_S.BLOCKED_COMPENSATOR, (_A.WAIT,)),
    (_S.BLOCKED_COMPENSATOR, _E.COMPENSATOR_EXHAUSTED): (_S.BLOCKED_COMPENSATOR, (_A.WAIT,)),
    (_S.BLOCKED_COMPENSATOR, _E.T_BLOCKED_EXPIRED): (
        _S.HARD_FAILED,
        (_A.ABANDON_AND_ABORT, _A.ALERT, _A.RELEASE_BARRIER),
    ),
    # a signed override records a human's word; the work is the ROLL_BACK that follows it in the same run
    (_S.BLOCKED_COMPENSATOR, _E.ACK_ROLLBACK): (_S.ROLLBACK, ()),
    (_S.BLOCKED_COMPENSATOR, _E.ACK_RESUME): (_S.ROLLBACK, ()),  # one more attempt per exhausted key
    (_S.AWAITING_ACK, _E.NEEDS_HUMAN): (_S.AWAITING_ACK, (_A.WAIT,)),
    (_S.AWAITING_ACK, _E.ACK_RESUME): (_S.INTERRUPTED, ()),
    (_S.AWAITING_ACK, _E.ACK_ROLLBACK): (_S.ROLLBACK, ()),
    # a force-rollback override may also turn a trace that would roll forward (or wait) around
    (_S.INTERRUPTED, _E.ACK_ROLLBACK): (_S.ROLLBACK, ()),
    (_S.RECONCILE, _E.ACK_ROLLBACK): (_S.ROLLBACK, ()),
    (_S.ROLLBACK, _E.ACK_ROLLBACK): (_S.ROLLBACK, ()),
    # an abort override, once ABORT_PHASE is written on every participant that had the phase open
    (_S.INTERRUPTED, _E.ACK_ABORT): (_S.ABORTED, (_A.ABANDON_AND_ABORT, _A.RELEASE_BARRIER)),
    (_S.RECONCILE, _E.ACK_ABORT): (_S.ABORTED, (_A.ABANDON_AND_ABORT, _A.RELEASE_BARRIER)),
    (_S.ROLLBACK, _E.ACK_ABORT): (_S.ABORTED, (_A.ABANDON_AND_ABORT, _A.RELEASE_BARRIER)),
    (_S.AWAITING_ACK, _E.ACK_ABORT): (_S.ABORTED, (_A.ABANDON_AND_ABORT, _A.RELEASE_BARRIER)),
    (_S.BLOCKED_COMPENSATOR, _E.ACK_ABORT): (_S.ABORTED, (_A.ABANDON_AND_ABORT, _A.RELEASE_BARRIER)),
    # a signed resume on a HARD_FAILED trace: one more attempt for each compensation it abandoned
    (_S.HARD_FAILED, _E.ACK_RESUME): (_S.HARD_FAILED, (_A.COMPENSATE,)),
    (_S.HARD_FAILED, _E.COMPENSATOR_FAILED): (_S.HARD_FAILED, (_A.WAIT,)),  # abandoned again
    (_S.HARD_FAILED, _E.DONE): (_S.CLEAN_EXIT, ()),  # every one compensated at last
}


def step(state: State, event: Event) -> tuple[State, tuple[Action, ...]]:
    """The next state and the actions that lead there."""
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} is not allowed in {state.value}") from None


def allowed(state: State) -> list[Event]:
    """The events ``state`` accepts."""
    return [e for (s, e) in TABLE if s is state]
