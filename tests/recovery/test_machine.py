"""The recovery state machine: the table of SPEC §4.1, nothing outside it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haios.errors import InvalidTransition
from haios.recovery.machine import TABLE, TERMINAL, Action, Event, State, allowed, step


def test_machine_roll_forward_path() -> None:
    state, actions = step(State.INTERRUPTED, Event.ROLL_FORWARD)
    assert (state, actions) == (State.RECONCILE, (Action.REPLAY_AND_COMMIT,))
    assert step(state, Event.DONE) == (State.CLEAN_EXIT, ())


def test_machine_rollback_compensates_before_restoring() -> None:
    state, actions = step(State.INTERRUPTED, Event.ROLL_BACK)
    assert state is State.ROLLBACK
    assert actions == (Action.COMPENSATE, Action.RESTORE_AND_ABORT)  # SPEC §4.3: compensation first


def test_machine_failing_compensator_to_hard_failed() -> None:
    state, _ = step(State.ROLLBACK, Event.COMPENSATOR_FAILED)
    assert state is State.ROLLBACK  # retried by the next run
    state, actions = step(state, Event.COMPENSATOR_EXHAUSTED)
    assert (state, actions) == (State.BLOCKED_COMPENSATOR, (Action.ALERT,))
    state, actions = step(state, Event.T_BLOCKED_EXPIRED)
    assert state is State.HARD_FAILED
    assert Action.RELEASE_BARRIER in actions and Action.ALERT in actions


def test_machine_partition_blocks_and_heals() -> None:
    state, _ = step(State.RECONCILE, Event.PARTITIONED)
    assert state is State.BLOCKED
    assert step(state, Event.HEALED) == (State.INTERRUPTED, ())


def test_machine_awaiting_ack_needs_an_override() -> None:
    state, _ = step(State.INTERRUPTED, Event.NEEDS_HUMAN)
    assert state is State.AWAITING_ACK
    for event in (Event.ROLL_FORWARD, Event.ROLL_BACK, Event.DONE):
        with pytest.raises(InvalidTransition):
            step(state, event)
    assert step(state, Event.ACK_RESUME)[0] is State.INTERRUPTED


def test_machine_signed_overrides() -> None:
    """resume: one more attempt (a blocked compensator goes back to compensating); force-rollback
    turns any open trace to ROLLBACK; abort ends it in ABORTED, which releases the barrier."""
    assert step(State.BLOCKED_COMPENSATOR, Event.ACK_RESUME)[0] is State.ROLLBACK
    for state in (State.INTERRUPTED, State.RECONCILE, State.ROLLBACK, State.AWAITING_ACK, State.BLOCKED_COMPENSATOR):
        assert step(state, Event.ACK_ROLLBACK)[0] is State.ROLLBACK
        after, actions = step(state, Event.ACK_ABORT)
        assert after is State.ABORTED and Action.RELEASE_BARRIER in actions
    assert State.ABORTED in TERMINAL
    for event in (Event.ACK_RESUME, Event.ACK_ROLLBACK, Event.ACK_ABORT):
        with pytest.raises(InvalidTransition):
            step(State.BLOCKED, event)  # a partitioned trace waits for the heal first


def test_machine_terminal_states_accept_nothing_but_a_retry() -> None:
    """A terminal state ends the trace; only HARD_FAILED takes a signed resume, which tries the
    abandoned compensations once more (and ends CLEAN_EXIT when every one succeeds)."""
    for state in TERMINAL - {State.HARD_FAILED}:
        assert allowed(state) == []
    assert step(State.HARD_FAILED, Event.ACK_RESUME) == (State.HARD_FAILED, (Action.COMPENSATE,))
    assert step(State.HARD_FAILED, Event.DONE) == (State.CLEAN_EXIT, ())
    assert step(State.HARD_FAILED, Event.COMPENSATOR_FAILED)[0] is State.HARD_FAILED
    with pytest.raises(InvalidTransition):
        step(State.HARD_FAILED, Event.ACK_ROLLBACK)


def test_machine_an_ack_records_and_the_roll_back_works() -> None:
    """An override's ACK moves the state; the ROLL_BACK that follows carries the work out."""
    state, actions = step(State.AWAITING_ACK, Event.ACK_ROLLBACK)
    assert (state, actions) == (State.ROLLBACK, ())
    assert step(state, Event.ROLL_BACK) == (State.ROLLBACK, (Action.COMPENSATE, Action.RESTORE_AND_ABORT))


def test_machine_every_state_is_reachable_from_interrupted() -> None:
    seen = {State.INTERRUPTED}
    frontier = [State.INTERRUPTED]
    while frontier:
        current = frontier.pop()
        for (s, _e), (nxt, _a) in TABLE.items():
            if s is current and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(State)


@given(st.sampled_from(list(State)), st.sampled_from(list(Event)))
def test_machine_step_is_the_table(state: State, event: Event) -> None:
    if (state, event) in TABLE:
        assert step(state, event) == TABLE[(state, event)]
    else:
        with pytest.raises(InvalidTransition, match=f"{event.value} is not allowed in {state.value}"):
            step(state, event)
