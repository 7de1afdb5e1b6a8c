"""Every branch of the recovery state machine, driven through ``reconcile`` with a mock transport,
the in-memory coordination backend, the in-memory audit trail and a fake clock: no git, no wall time,
no processes. The nodes are real node roots; the mock hands each recovery request to the node side
(``node.recover.dispatch``) and scripts the compensators' and resume hooks' commands."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.cluster import git, plant
from helpers.overrides import signed_override, supervisors

from haios import controlfile
from haios.audit import MemoryRecorder
from haios.coord.memory import MemoryBackend
from haios.errors import TransportError
from haios.node.recover import dispatch
from haios.ops import reconcile
from haios.recovery import RunResult
from haios.recovery.journal import find
from haios.recovery.machine import TABLE, Event, State
from haios.transport.base import Completed
from haios.transport.mock import MockTransport

NODES = ("node-1", "node-2", "node-3")


@contextmanager
def no_git() -> Iterator[None]:
    """Fail the test if anything starts git (or any other process) while it runs."""
    real = subprocess.Popen.__init__

    def refuse(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        raise AssertionError(f"a process was started during a reconcile through the mock: {args!r}")

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real  # type: ignore[method-assign]


@dataclass
class Rig:
    """A real cluster's node roots behind a mock transport, and everything else in memory."""

    cluster: Path
    mock: MockTransport
    t: float
    backend: MemoryBackend = field(default_factory=MemoryBackend)
    recorder: MemoryRecorder = field(default_factory=MemoryRecorder)
    compensator_ok: bool = True
    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    restore: Any = None  # the handler a test replaced, to put back

    def clock(self) -> float:
        return self.t

    def run(self) -> RunResult:
        with no_git():
            return reconcile(
                self.cluster,
                transport=self.mock,
                backend=self.backend,
                clock=self.clock,
                recorder=self.recorder,
                events=self.events.append,
            )

    def moves(self, trace_id: str) -> list[tuple[str, str]]:
        """The trace's state changes so far, as its journal told the event stream."""
        return [(e["from"], e["to"]) for e in self.events if e["type"] == "trace.state" and e["trace_id"] == trace_id]

    def alerts(self, trace_id: str) -> list[str]:
        j = find(self.cluster, trace_id)
        return [a["alert"] for a in j.alerts] if j is not None else []


def _refresh(mock: MockTransport, roots: dict[str, Path], node: str) -> None:
    root = roots[node]
    mock.files[node] = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def rig(cluster: Path, tmp_path: Path) -> Rig:
    roots = {n: cluster / "nodes" / n for n in NODES}
    holder: dict[str, Rig] = {}

    def handle(node: str, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return dispatch(roots[node], request)
        finally:
            _refresh(holder["rig"].mock, roots, node)

    def command(node: str, argv: list[str]) -> Completed:
        holder["rig"].commands.append(argv)
        if argv[:3] == ["haios", "sim", "cloud"]:  # a compensator
            ok = holder["rig"].compensator_ok
            return Completed(0, "deleted\n", "") if ok else Completed(1, "", "the cloud API said no")
        return Completed(0, "", "")  # a resume hook that ran and changed nothing

    mock = MockTransport({}, mirror=tmp_path / "mirror", handler=handle, command=command)
    holder["rig"] = Rig(cluster, mock, 0.0)
    return holder["rig"]


def _planted(rig: Rig, **how: Any) -> Rig:
    """Plant a half-done (2, ANALYZE), snapshot the roots into the mock, and set the fake clock a
    little later than the plant (its Φ timeout expired, the heartbeats still fresh)."""
    plant(rig.cluster, settle=False, **how)
    for node in NODES:
        _refresh(rig.mock, {n: rig.cluster / "nodes" / n for n in NODES}, node)
    rig.t = time.time() + 5
    return rig


def _finish_by_hand(rig: Rig) -> None:
    """Every node commits (2, ANALYZE) without haios."""
    from haios.node import Node

    for node in NODES:
        tx = Node(rig.cluster / "nodes" / node).resume(2, "ANALYZE")
        if node == "node-3":
            tx.prepare()
        tx.commit()
        tx.close()
        _refresh(rig.mock, {n: rig.cluster / "nodes" / n for n in NODES}, node)


def _only(result: RunResult) -> tuple[str, str, int]:
    (outcome,) = result.outcomes
    return outcome.trace_id, outcome.after, result.exit_code()


def _failing_forward(rig: Rig, failing: str) -> None:
    """The roll-forward breaks on ``failing`` (the connection drops during the command)."""
    handler = rig.mock.handler
    assert handler is not None

    def fail(node: str, request: dict[str, Any]) -> dict[str, Any]:
        if node == failing and request["op"] == "forward":
            raise TransportError(f"{node}: the connection broke during a command")
        return handler(node, request)

    rig.mock.handler = fail
    rig.restore = handler


def test_roll_forward_replays_and_commits(rig: Rig) -> None:
    _planted(rig, node_1="commit", node_2="prepare", node_3="prepare")
    trace, after, code = _only(rig.run())
    assert (after, code) == ("CLEAN_EXIT", 0)
    assert rig.moves(trace) == [("INTERRUPTED", "RECONCILE"), ("RECONCILE", "CLEAN_EXIT")]
    forwards = [n for n, op, arg in rig.mock.log if op == "call" and arg["op"] == "forward"]
    assert forwards == ["node-2", "node-3"]
    assert all(arg["token"] == 1 for _, op, arg in rig.mock.log if op == "call" and arg["op"] != "inspect")
    (commit,) = rig.recorder.commits
    assert "rolled forward g=2 ANALYZE" in commit["subject"] and commit["traces"][0]["result"] == "CLEAN_EXIT"


def test_roll_back_compensates_then_restores(rig: Rig) -> None:
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    trace, after, code = _only(rig.run())
    assert (after, code) == ("CLEAN_EXIT", 0)
    assert rig.moves(trace) == [("INTERRUPTED", "ROLLBACK"), ("ROLLBACK", "CLEAN_EXIT")]
    ops = [arg["op"] for _, op, arg in rig.mock.log if op == "call" and arg["op"] != "inspect"]
    assert ops == ["compensated", "rollback", "rollback", "rollback"]  # COMPENSATE, then RESTORE_AND_ABORT
    assert [argv[:4] for argv in rig.commands] == [["haios", "sim", "cloud", "delete"]]


def test_a_run_that_stopped_mid_forward_is_continued(rig: Rig) -> None:
    """RECONCILE + ROLL_FORWARD: a later run resumes the roll-forward an earlier one left."""
    _planted(rig, node_1="prepare", node_2="prepare", node_3="prepare")
    _failing_forward(rig, "node-3")
    trace, after, code = _only(rig.run())
    assert (after, code) == ("RECONCILE", 1)
    rig.mock.handler = rig.restore
    rig.t += 1
    again, after, code = _only(rig.run())
    assert (again, after, code) == (trace, "CLEAN_EXIT", 0)
    resumed = ("RECONCILE", "RECONCILE")  # ROLL_FORWARD again, with this run's reason
    assert rig.moves(trace) == [("INTERRUPTED", "RECONCILE"), resumed, ("RECONCILE", "CLEAN_EXIT")]
    assert rig.backend.read("ANALYZE").token == 2  # type: ignore[union-attr]


def test_a_partition_mid_forward_blocks_and_stays_blocked(rig: Rig) -> None:
    """RECONCILE + PARTITIONED, then BLOCKED + PARTITIONED on the next run, then the heal."""
    _planted(rig, node_1="commit", node_2="prepare", node_3="prepare")
    handler = rig.mock.handler
    assert handler is not None

    def cut_after_node_2(node: str, request: dict[str, Any]) -> dict[str, Any]:
        answer = handler(node, request)
        if node == "node-2" and request["op"] == "forward":
            rig.mock.down.add("node-3")  # the network goes while the roll-forward runs
        return answer

    rig.mock.handler = cut_after_node_2
    trace, after, code = _only(rig.run())
    assert (after, code) == ("RECONCILE", 1)
    for _ in range(2):
        rig.t += 1
        assert _only(rig.run())[1:] == ("BLOCKED", 3)
    rig.mock.down.clear()
    rig.t += 1
    assert _only(rig.run()) == (trace, "CLEAN_EXIT", 0)
    assert rig.moves(trace) == [
        ("INTERRUPTED", "RECONCILE"),
        ("RECONCILE", "BLOCKED"),
        ("BLOCKED", "INTERRUPTED"),
        ("INTERRUPTED", "RECONCILE"),
        ("RECONCILE", "CLEAN_EXIT"),
    ]


def test_a_partition_blocks_and_the_heal_goes_on(rig: Rig) -> None:
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin")
    rig.mock.down.add("node-3")
    trace, after, code = _only(rig.run())
    assert (after, code) == ("BLOCKED", 3)
    rig.mock.down.clear()
    rig.t += 1
    again, after, code = _only(rig.run())
    assert (again, after, code) == (trace, "CLEAN_EXIT", 0)
    assert rig.moves(trace) == [
        ("INTERRUPTED", "BLOCKED"),
        ("BLOCKED", "INTERRUPTED"),  # HEALED
        ("INTERRUPTED", "ROLLBACK"),
        ("ROLLBACK", "CLEAN_EXIT"),
    ]


def test_a_failing_compensator_backs_off_runs_out_and_hard_fails(rig: Rig) -> None:
    """COMPENSATOR_FAILED (WAIT), COMPENSATOR_EXHAUSTED (ALERT), T_BLOCKED_EXPIRED (HARD_FAILED: the
    side effect abandoned, ABORT_PHASE everywhere, an alert, the barrier released) — on the fake clock."""
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    rig.compensator_ok = False
    result = rig.run()
    trace, after, code = _only(result)
    assert (after, code) == ("ROLLBACK", 2) and result.next_due is not None
    runs = 1
    while after == "ROLLBACK" and runs < 10:
        rig.t = (result.next_due or rig.t) + 1  # the back-off passes without waiting for it
        result = rig.run()
        _, after, code = _only(result)
        runs += 1
    assert (after, code) == ("BLOCKED_COMPENSATOR", 3)
    j = find(rig.cluster, trace)
    assert j is not None and j.compensation["key-node-1-0"]["attempts"] == 5  # sel.max_attempts
    assert rig.alerts(trace) == ["sel_compensator_failed"]
    rig.t += 60  # within T_blocked: nothing runs, nothing is committed
    commits = len(rig.recorder.commits)
    assert _only(rig.run())[1:] == ("BLOCKED_COMPENSATOR", 3) and len(rig.recorder.commits) == commits
    rig.t += 3600
    result = rig.run()
    assert _only(result)[1:] == ("HARD_FAILED", 3)
    assert rig.alerts(trace) == ["sel_compensator_failed", "compensator_timeout"]
    assert rig.moves(trace)[-2:] == [("ROLLBACK", "BLOCKED_COMPENSATOR"), ("BLOCKED_COMPENSATOR", "HARD_FAILED")]
    aborted = [n for n, op, arg in rig.mock.log if op == "call" and arg["op"] == "rollback" and arg.get("abandon")]
    assert aborted == list(NODES)
    assert result.plan.traces[0].trace_id == trace and result.exit_code() == 3


def test_a_partition_during_a_rollback_blocks_it_until_the_heal(rig: Rig) -> None:
    """ROLLBACK + PARTITIONED: a rollback waiting on its compensator's back-off meets a partition."""
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    rig.compensator_ok = False
    result = rig.run()
    trace, after, _ = _only(result)
    assert after == "ROLLBACK"
    rig.mock.down.add("node-2")
    rig.t = (result.next_due or rig.t) + 1
    assert _only(rig.run())[1:] == ("BLOCKED", 3)
    rig.mock.down.clear()
    rig.compensator_ok = True
    rig.t += 1
    assert _only(rig.run()) == (trace, "CLEAN_EXIT", 0)
    assert rig.moves(trace) == [
        ("INTERRUPTED", "ROLLBACK"),  # then COMPENSATOR_FAILED: it stays, waiting for the back-off
        ("ROLLBACK", "BLOCKED"),
        ("BLOCKED", "INTERRUPTED"),
        ("INTERRUPTED", "ROLLBACK"),
        ("ROLLBACK", "CLEAN_EXIT"),
    ]


def _corrupt_copy(rig: Rig, node: str) -> None:
    """Flip a byte inside the first record of the node's WAL as the mock serves it (the root itself
    stays whole): mid-log corruption, which no automation may guess past."""
    name = min(k for k in rig.mock.files[node] if k.startswith("wal/") and k.endswith(".wal"))
    data = bytearray(rig.mock.files[node][name])
    data[80] ^= 0xFF
    rig.mock.files[node][name] = bytes(data)


@pytest.mark.parametrize("before", ["RECONCILE", "ROLLBACK", "BLOCKED"])
def test_a_wal_corrupt_mid_log_asks_a_human_from_any_open_state(rig: Rig, before: str) -> None:
    """RECONCILE, ROLLBACK and BLOCKED + NEEDS_HUMAN: a participant's WAL corrupt mid-log."""
    if before == "ROLLBACK":
        _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
        rig.compensator_ok = False
    else:
        _planted(rig, node_1="commit", node_2="prepare", node_3="prepare")
    if before == "BLOCKED":
        rig.mock.down.add("node-3")
    if before == "RECONCILE":
        _failing_forward(rig, "node-3")
    result = rig.run()
    trace, after, _ = _only(result)
    assert after == before
    _corrupt_copy(rig, "node-1" if before == "RECONCILE" else "node-2")  # one the first run did not write to
    rig.t = (result.next_due or rig.t) + 1
    trace_again, after, code = _only(rig.run())
    assert (trace_again, after, code) == (trace, "AWAITING_ACK", 3)
    assert rig.moves(trace)[-1] == (before, "AWAITING_ACK")
    assert rig.alerts(trace)[-1] == "awaiting_ack"


def test_a_hold_policy_asks_a_human_once(rig: Rig) -> None:
    state = rig.cluster / "desired/state.yaml"
    state.write_text(state.read_text().replace("  ANALYZE:\n    on_partial: auto", "  ANALYZE:\n    on_partial: hold"))
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin")
    trace, after, code = _only(rig.run())
    assert (after, code) == ("AWAITING_ACK", 3)
    rig.t += 60
    assert _only(rig.run())[1:] == ("AWAITING_ACK", 3)  # NEEDS_HUMAN again: it waits, no second alert
    assert rig.moves(trace) == [("INTERRUPTED", "AWAITING_ACK")]
    assert rig.alerts(trace) == ["awaiting_ack"]


def test_a_resume_hook_runs_and_the_transition_is_assessed_again(rig: Rig) -> None:
    (rig.cluster / "playbooks/resume-analyze.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: resume-analyze\nresumes: ANALYZE\n"
        'run:\n  command: [haios, node, prepare, ".", --g, "{g}", --phase, "{phase}"]\ntimeout: 60s\n'
    )
    state = rig.cluster / "desired/state.yaml"
    state.write_text(
        state.read_text().replace(
            "  ANALYZE:\n    on_partial: auto",
            "  ANALYZE:\n    on_partial: resume\n    resume_playbook: resume-analyze",
        )
    )
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin")
    trace, after, code = _only(rig.run())
    assert (after, code) == ("INTERRUPTED", 2)  # RUN_RESUME_HOOK ran; node-3 has not PREPAREd yet
    assert rig.commands == [["haios", "node", "prepare", ".", "--g", "2", "--phase", "ANALYZE"]]
    checkpoint = [arg for n, op, arg in rig.mock.log if op == "call" and arg["op"] == "checkpoint"]
    assert [(c["step"], c["outcome"]) for c in checkpoint] == [("resume", "ok")]
    assert find(rig.cluster, trace).resume_attempts == 1  # type: ignore[union-attr]
    _finish_by_hand(rig)  # the executor finished the phase itself meanwhile
    rig.t += 1
    assert _only(rig.run()) == (trace, "CLEAN_EXIT", 0)
    assert rig.moves(trace) == [("INTERRUPTED", "CLEAN_EXIT")]  # INTERRUPTED + DONE


def test_replay_that_fails_validation_rolls_back(rig: Rig) -> None:
    """VALIDATION_FAILED: a replayed file its schema rejects turns the roll-forward into a rollback."""
    _planted(rig, node_1="prepare", node_2="prepare", node_3="prepare")
    schema = {"name": "analyze", "paths": ["analyze/*.conf"], "schema": {"type": "object"}}
    for node in NODES:  # a schema pushed after the phase PREPAREd: its files no longer pass
        path = rig.cluster / "nodes" / node / "policy"
        policy, version = controlfile.read_mapping(path)
        controlfile.write_mapping(path, {**policy, "data_schemas": [schema]}, expected_version=version)
        _refresh(rig.mock, {n: rig.cluster / "nodes" / n for n in NODES}, node)
    trace, after, code = _only(rig.run())
    assert (after, code) == ("CLEAN_EXIT", 0)
    assert rig.moves(trace) == [
        ("INTERRUPTED", "RECONCILE"),
        ("RECONCILE", "ROLLBACK"),
        ("ROLLBACK", "CLEAN_EXIT"),
    ]
    assert find(rig.cluster, trace).decision == "rollback"  # type: ignore[union-attr]


def test_a_trace_finished_without_us_is_closed(rig: Rig) -> None:
    """INTERRUPTED + DONE: the transition committed everywhere while its trace stood open."""
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin")
    rig.mock.down.add("node-3")
    trace, after, _ = _only(rig.run())
    assert after == "BLOCKED"
    _finish_by_hand(rig)  # the coordinator came back and finished the phase itself
    rig.mock.down.clear()
    rig.t += 1
    result = rig.run()
    assert _only(result) == (trace, "CLEAN_EXIT", 0)
    assert rig.moves(trace)[-1] == ("BLOCKED", "CLEAN_EXIT")


@pytest.fixture
def keys(rig: Rig, tmp_path: Path) -> dict[str, Path]:
    return supervisors(rig.cluster, tmp_path)


@pytest.mark.parametrize(
    ("action", "path"),
    [
        ("resume", [("INTERRUPTED", "AWAITING_ACK"), ("AWAITING_ACK", "INTERRUPTED"), ("INTERRUPTED", "ROLLBACK")]),
        ("force-rollback", [("INTERRUPTED", "AWAITING_ACK"), ("AWAITING_ACK", "ROLLBACK")]),
        # (the grant records the override's reason first; the abort's work then ends the trace)
        ("abort", [("INTERRUPTED", "AWAITING_ACK"), ("AWAITING_ACK", "AWAITING_ACK"), ("AWAITING_ACK", "ABORTED")]),
    ],
)
def test_signed_overrides_drive_the_acks(
    rig: Rig, keys: dict[str, Path], cli: Any, action: str, path: list[tuple[str, str]]
) -> None:
    """ACK_RESUME, ACK_ROLLBACK and ACK_ABORT from AWAITING_ACK (the override files are made and
    committed before the run; the run itself touches no git)."""
    state = rig.cluster / "desired/state.yaml"
    state.write_text(state.read_text().replace("  ANALYZE:\n    on_partial: auto", "  ANALYZE:\n    on_partial: hold"))
    git(rig.cluster, "commit", "-qam", "tests: hold ANALYZE")
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    trace, after, _ = _only(rig.run())
    assert after == "AWAITING_ACK"
    state.write_text(state.read_text().replace("on_partial: hold", "on_partial: auto"))  # resume needs the hold lifted
    git(rig.cluster, "commit", "-qam", "tests: ANALYZE automatic again")
    signed_override(cli, rig.cluster, keys, trace, action, ("alice", "bob"))
    rig.t = time.time() + 5
    result = rig.run()
    (outcome,) = result.outcomes
    assert outcome.override is not None and outcome.override["action"] == action
    final = "ABORTED" if action == "abort" else "CLEAN_EXIT"
    assert (outcome.after, result.exit_code()) == (final, 0)
    assert rig.moves(trace)[: len(path)] == path
    marks = [arg for n, op, arg in rig.mock.log if op == "call" and arg["op"] == "checkpoint"]
    assert {m["outcome"]["nonce"] for m in marks} == {outcome.override["nonce"]}  # on every participant's WAL


def _exhaust(rig: Rig) -> str:
    """A compensator that fails until its attempts are spent: BLOCKED_COMPENSATOR."""
    rig.compensator_ok = False
    result = rig.run()
    for _ in range(10):
        trace, after, _ = _only(result)
        if after != "ROLLBACK":
            break
        rig.t = (result.next_due or rig.t) + 1
        result = rig.run()
    assert after == "BLOCKED_COMPENSATOR"
    return trace


def test_a_signed_resume_gives_a_blocked_compensator_one_more_attempt(
    rig: Rig, keys: dict[str, Path], cli: Any
) -> None:
    """BLOCKED_COMPENSATOR + ACK_RESUME: back to ROLLBACK, whose compensation now succeeds."""
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    trace = _exhaust(rig)
    signed_override(cli, rig.cluster, keys, trace, "resume", ("alice", "carol"))
    rig.compensator_ok = True
    rig.t += 1
    assert _only(rig.run()) == (trace, "CLEAN_EXIT", 0)
    assert rig.moves(trace)[-3:] == [
        ("ROLLBACK", "BLOCKED_COMPENSATOR"),
        ("BLOCKED_COMPENSATOR", "ROLLBACK"),
        ("ROLLBACK", "CLEAN_EXIT"),
    ]


def _to(rig: Rig, start: str) -> str:
    """A trace with a side effect on node-1, brought to ``start`` (INTERRUPTED is reached from a
    BLOCKED trace whose partition heals as the override is applied)."""
    if start in ("INTERRUPTED", "RECONCILE"):
        _planted(rig, node_1="prepare", node_2="prepare", node_3="prepare", effects={"node-1": 1})
    else:
        _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    if start == "INTERRUPTED":
        rig.mock.down.add("node-3")
    if start == "RECONCILE":
        _failing_forward(rig, "node-1")  # nothing committed yet: a rollback is still possible
    if start == "ROLLBACK":
        rig.compensator_ok = False
    trace = _exhaust(rig) if start == "BLOCKED_COMPENSATOR" else _only(rig.run())[0]
    j = find(rig.cluster, trace)
    assert j is not None and j.state == ("BLOCKED" if start == "INTERRUPTED" else start)
    rig.mock.down.clear()
    rig.mock.handler = rig.restore or rig.mock.handler
    rig.compensator_ok = True
    return trace


@pytest.mark.parametrize("start", ["INTERRUPTED", "RECONCILE", "ROLLBACK", "BLOCKED_COMPENSATOR"])
@pytest.mark.parametrize("action", ["force-rollback", "abort"])
def test_a_signed_rollback_or_abort_from_every_open_state(
    rig: Rig, keys: dict[str, Path], cli: Any, start: str, action: str
) -> None:
    """ACK_ROLLBACK and ACK_ABORT from INTERRUPTED, RECONCILE, ROLLBACK and BLOCKED_COMPENSATOR."""
    trace = _to(rig, start)
    signed_override(cli, rig.cluster, keys, trace, action, ("bob", "carol"))
    rig.t += 1
    final = "ABORTED" if action == "abort" else "CLEAN_EXIT"
    assert _only(rig.run()) == (trace, final, 0)
    moves = rig.moves(trace)
    if start != "ROLLBACK" or action == "abort":
        assert (start, "ROLLBACK" if action == "force-rollback" else "ABORTED") in moves
    assert moves[-1][1] == final
    deleted = [argv for argv in rig.commands if argv[:4] == ["haios", "sim", "cloud", "delete"]]
    assert bool(deleted) == (action == "force-rollback" or start in ("ROLLBACK", "BLOCKED_COMPENSATOR"))


@pytest.mark.parametrize("succeeds", [True, False])
def test_a_signed_resume_retries_what_hard_failed_abandoned(
    rig: Rig, keys: dict[str, Path], cli: Any, succeeds: bool
) -> None:
    """HARD_FAILED + ACK_RESUME: one more attempt; DONE when it succeeds, COMPENSATOR_FAILED when not."""
    _planted(rig, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    trace = _exhaust(rig)
    rig.t += 3600
    assert _only(rig.run())[1] == "HARD_FAILED"
    signed_override(cli, rig.cluster, keys, trace, "resume", ("alice", "bob"))
    rig.compensator_ok = succeeds
    rig.t += 1
    assert _only(rig.run()) == (trace, "CLEAN_EXIT" if succeeds else "HARD_FAILED", 0 if succeeds else 3)
    assert rig.moves(trace)[-1] == (("HARD_FAILED", "CLEAN_EXIT") if succeeds else ("HARD_FAILED", "HARD_FAILED"))


def test_every_transition_of_the_table_is_driven_here() -> None:
    """Every (state, event) pair of the table is driven by a test above, but the few the runner
    never feeds (named, with why): that set must only ever shrink."""
    driven = {
        (State.INTERRUPTED, Event.ROLL_FORWARD),
        (State.INTERRUPTED, Event.ROLL_BACK),
        (State.INTERRUPTED, Event.RESUME),
        (State.INTERRUPTED, Event.PARTITIONED),
        (State.INTERRUPTED, Event.NEEDS_HUMAN),
        (State.RECONCILE, Event.ROLL_FORWARD),
        (State.RECONCILE, Event.DONE),
        (State.RECONCILE, Event.VALIDATION_FAILED),
        (State.ROLLBACK, Event.DONE),
        (State.ROLLBACK, Event.ROLL_BACK),
        (State.ROLLBACK, Event.COMPENSATOR_FAILED),
        (State.ROLLBACK, Event.COMPENSATOR_EXHAUSTED),
        (State.BLOCKED, Event.HEALED),
        (State.BLOCKED, Event.DONE),
        (State.BLOCKED_COMPENSATOR, Event.T_BLOCKED_EXPIRED),
        (State.AWAITING_ACK, Event.NEEDS_HUMAN),
        (State.AWAITING_ACK, Event.ACK_RESUME),
        (State.AWAITING_ACK, Event.ACK_ROLLBACK),
        (State.AWAITING_ACK, Event.ACK_ABORT),
        (State.INTERRUPTED, Event.DONE),
        (State.RECONCILE, Event.PARTITIONED),
        (State.BLOCKED, Event.PARTITIONED),
        (State.BLOCKED_COMPENSATOR, Event.ACK_RESUME),
        (State.RECONCILE, Event.NEEDS_HUMAN),
        (State.ROLLBACK, Event.PARTITIONED),
        (State.ROLLBACK, Event.NEEDS_HUMAN),
        (State.BLOCKED, Event.NEEDS_HUMAN),
        *(
            (s, e)
            for s in (State.INTERRUPTED, State.RECONCILE, State.ROLLBACK)
            for e in (Event.ACK_ROLLBACK, Event.ACK_ABORT)
        ),
        (State.BLOCKED_COMPENSATOR, Event.ACK_ROLLBACK),
        (State.BLOCKED_COMPENSATOR, Event.ACK_ABORT),
        (State.HARD_FAILED, Event.ACK_RESUME),
        (State.HARD_FAILED, Event.COMPENSATOR_FAILED),
        (State.HARD_FAILED, Event.DONE),
    }
    # never fed by the runner today: a blocked compensator runs nothing until T_blocked or an
    # override moves it back to ROLLBACK; and a roll-forward that began is never turned back but by
    # a signed force-rollback (ACK_ROLLBACK)
    unused = {
        (State.RECONCILE, Event.ROLL_BACK),
        (State.BLOCKED_COMPENSATOR, Event.ROLL_BACK),
        (State.BLOCKED_COMPENSATOR, Event.COMPENSATOR_FAILED),
        (State.BLOCKED_COMPENSATOR, Event.COMPENSATOR_EXHAUSTED),
    }
    assert driven | unused == set(TABLE) and not driven & unused
