"""Node-side recovery operations: fenced, idempotent, checkpointed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Invoke

from haios import controlfile
from haios.errors import BarrierError, FencedError, UsageError
from haios.node import Node, init_node_root, recover, scan_phases
from haios.wal import RecordType, read_records

COST = {"amount": 1, "currency": "EUR"}


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    root = tmp_path / "n1"
    init_node_root(root, "n1", {"cluster": "c", "max_g": None})
    return root


def _half_done(root: Path, *, prepare: bool, effects: int = 0) -> None:
    """g=1 ANALYZE begun (and prepared) on n1, left open as a crash would leave it."""
    tx = Node(root).begin(1, "ANALYZE", participants=["n1"], trace_id="phase-trace")
    tx.intent("a.conf", b"new\n")
    for i in range(effects):
        tx.side_effect(f"k{i}", "fakecloud.vm", {"resource": f"vm{i}"}, "fakecloud-vm", COST)
    if prepare:
        tx.prepare()
    tx.close()


def _recovery(root: Path) -> list[dict[str, object]]:
    return [r.payload for r in read_records(root / "wal") if r.type is RecordType.RECOVERY]


def test_recover_inspect_reports_status_and_effects(node_root: Path) -> None:
    _half_done(node_root, prepare=False, effects=2)
    info = recover.inspect(node_root, 1, "ANALYZE")
    assert info["status"] == "begun" and info["participants"] == ["n1"]
    assert [(e["key"], e["returned"], e["compensated"]) for e in info["side_effects"]] == [
        ("k0", False, False),
        ("k1", False, False),
    ]
    assert recover.inspect(node_root, 1, "BLUEPRINT")["status"] == "absent"


def test_recover_forward_is_idempotent_and_checkpointed(node_root: Path) -> None:
    _half_done(node_root, prepare=True)
    result = recover.forward(node_root, trace_id="t1", token=3, g=1, phase="ANALYZE")
    assert result["outcome"] == "committed"
    state, _ = controlfile.read_mapping(node_root / "state.txt")
    assert (state["g"], state["ph"]) == (1, "ANALYZE")
    assert (node_root / "data/a.conf").read_bytes() == b"new\n"
    assert recover.forward(node_root, trace_id="t1", token=3, g=1, phase="ANALYZE")["outcome"] == "already committed"
    steps = _recovery(node_root)
    assert [(s["trace_id"], s["token"], s["shard"], s["step"], s["outcome"]) for s in steps] == [
        ("t1", 3, "ANALYZE", "commit", "committed")
    ]
    assert recover.inspect(node_root, 1, "ANALYZE")["status"] == "committed"


def test_recover_forward_refuses_an_unprepared_phase(node_root: Path) -> None:
    _half_done(node_root, prepare=False)
    with pytest.raises(BarrierError, match="only a PREPAREd phase rolls forward"):
        recover.forward(node_root, trace_id="t1", token=1, g=1, phase="ANALYZE")


def test_recover_every_write_checks_the_fence_first(node_root: Path) -> None:
    _half_done(node_root, prepare=True, effects=1)
    recover.checkpoint(node_root, trace_id="new", token=5, g=1, phase="ANALYZE", step="lease", outcome="ok")
    before = len(list(read_records(node_root / "wal")))
    stale = {"trace_id": "old", "token": 4, "g": 1, "phase": "ANALYZE"}
    for op, extra in (
        ("forward", {}),
        ("rollback", {"reason": "x"}),
        ("compensated", {"key": "k0", "result": {}}),
        ("repair", {}),
        ("checkpoint", {"step": "s", "outcome": "ok"}),
    ):
        with pytest.raises(FencedError, match="token 4 for shard ANALYZE refused; token 5 was accepted"):
            recover.dispatch(node_root, {"op": op, **stale, **extra})
    assert len(list(read_records(node_root / "wal"))) == before  # nothing written


def test_recover_rollback_waits_for_compensation(node_root: Path) -> None:
    _half_done(node_root, prepare=True, effects=2)
    with pytest.raises(BarrierError, match="not yet compensated: k0, k1"):
        recover.rollback(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", reason="r")
    recover.compensated(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", key="k1", result={"ok": 1})
    assert (
        recover.compensated(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", key="k1", result={})["outcome"]
        == "already compensated"
    )
    recover.compensated(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", key="k0", result={"ok": 1})
    assert recover.rollback(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", reason="r")["outcome"] == "aborted"
    assert not (node_root / "data/a.conf").exists()  # the snapshot was restored
    assert recover.rollback(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", reason="r")["outcome"] == (
        "already clean"
    )
    log = scan_phases(node_root)[(1, "ANALYZE")]
    assert log.ended == "ABORT_PHASE" and set(log.compensated) == {"k0", "k1"}


def test_recover_abandon_lets_a_hard_failed_trace_abort(node_root: Path) -> None:
    _half_done(node_root, prepare=False, effects=1)
    result = recover.rollback(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", reason="hard", abandon=["k0"])
    assert result.pop("vc")["n1"] > 0  # the clock of its end, for phase_transition.finished
    assert result == {"node": "n1", "outcome": "aborted", "abandoned": ["k0"]}


def test_recover_aborted_phase_owes_compensation_and_blocks_begin(node_root: Path) -> None:
    tx = Node(node_root).begin(1, "ANALYZE", participants=["n1"])
    tx.side_effect("k0", "fakecloud.vm", {"resource": "vm0"}, "fakecloud-vm", COST)
    tx.prepare()
    tx.abort("coordinator abort")  # the executor aborts; compensation is recovery's
    state, _ = controlfile.read_mapping(node_root / "state.txt")
    begin = state["uncompensated"][0]["begin_lamport"]
    assert state["uncompensated"] == [{"g": 1, "phase": "ANALYZE", "begin_lamport": begin, "keys": ["k0"]}]
    with pytest.raises(BarrierError, match=r"side effects not compensated yet \(k0\)"):
        Node(node_root).begin(1, "ANALYZE", participants=["n1"])
    # the aborted phase lies before the WAL's tail: found from its BEGIN_PHASE
    assert recover.inspect(node_root, 1, "ANALYZE")["status"] == "absent"
    info = recover.inspect(node_root, 1, "ANALYZE", from_lamport=begin)
    assert info["status"] == "aborted" and info["side_effects"][0]["compensated"] is False
    recover.compensated(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", key="k0", result={}, from_lamport=begin)
    state, _ = controlfile.read_mapping(node_root / "state.txt")
    assert "uncompensated" not in state
    Node(node_root).begin(1, "ANALYZE", participants=["n1"]).close()  # free to go on


def test_recover_hard_failed_abandons_what_an_aborted_phase_owes(node_root: Path) -> None:
    """The executor aborted, the compensator never succeeded, T_blocked passed: the debt is given up
    on durably (a RECOVERY abandon record), state.txt stops owing it, and the node may go on."""
    tx = Node(node_root).begin(1, "ANALYZE", participants=["n1"])
    tx.side_effect("k0", "fakecloud.vm", {"resource": "vm0"}, "fakecloud-vm", COST)
    tx.side_effect("k1", "fakecloud.vm", {"resource": "vm1"}, "fakecloud-vm", COST)
    tx.abort("coordinator abort")
    recover.compensated(node_root, trace_id="t", token=1, g=1, phase="ANALYZE", key="k1", result={}, from_lamport=1)
    args = {"trace_id": "t", "token": 1, "g": 1, "phase": "ANALYZE", "reason": "hard"}
    result = recover.rollback(node_root, **args, abandon=["k0", "k1"])  # type: ignore[arg-type]
    assert result == {"node": "n1", "outcome": "abandoned", "abandoned": ["k0"]}  # k1 was compensated
    state, _ = controlfile.read_mapping(node_root / "state.txt")
    assert "uncompensated" not in state
    assert scan_phases(node_root)[(1, "ANALYZE")].abandoned == ["k0"]
    info = recover.inspect(node_root, 1, "ANALYZE", from_lamport=1)
    assert [(e["key"], e["abandoned"]) for e in info["side_effects"]] == [("k0", True), ("k1", False)]
    again = recover.rollback(node_root, **args, abandon=["k0", "k1"])  # type: ignore[arg-type]
    assert again["outcome"] == "already clean"  # idempotent: no second record
    assert [r["step"] for r in _recovery(node_root)].count("abandon") == 1
    Node(node_root).begin(1, "ANALYZE", participants=["n1"]).close()


def test_recover_repair_cuts_a_torn_tail_and_forward_recommits(node_root: Path) -> None:
    tx = Node(node_root).begin(1, "ANALYZE", participants=["n1"])
    tx.intent("a.conf", b"x\n")
    tx.prepare()
    tx.commit()
    last = list(read_records(node_root / "wal"))[-1]
    assert last.type is RecordType.COMMIT_PHASE
    segment = node_root / "wal" / last.segment
    with open(segment, "r+b") as fh:
        fh.truncate(last.offset + 5)  # the COMMIT_PHASE record is torn
    info = recover.inspect(node_root, 1, "ANALYZE")
    assert info["torn_tail"] is not None and info["status"] == "prepared"  # state.txt's cursor no longer fits
    recover.repair(node_root, trace_id="t", token=1, g=1, phase="ANALYZE")
    assert list(segment.parent.glob("*.broken"))
    assert recover.forward(node_root, trace_id="t", token=1, g=1, phase="ANALYZE")["outcome"] == "committed"
    assert scan_phases(node_root)[(1, "ANALYZE")].ended == "COMMIT_PHASE"


def test_recover_dispatch_rejects_unknown_requests(node_root: Path) -> None:
    with pytest.raises(UsageError, match="unknown recovery operation 'explode'"):
        recover.dispatch(node_root, {"op": "explode"})
    with pytest.raises(UsageError, match="bad arguments"):
        recover.dispatch(node_root, {"op": "forward", "g": 1})
    with pytest.raises(UsageError, match="bad arguments"):
        recover.dispatch(node_root, {"op": "inspect", "phase": "ANALYZE"})


def test_recover_cli_runs_a_json_request(node_root: Path, cli: Invoke) -> None:
    _half_done(node_root, prepare=True)
    result = cli("node", "recover", node_root, "--request", '{"op": "inspect", "g": 1, "phase": "ANALYZE"}')
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "prepared"
    request = {"op": "forward", "trace_id": "t", "token": 2, "g": 1, "phase": "ANALYZE"}
    assert cli("node", "recover", node_root, "--request", json.dumps(request)).exit_code == 0
    stale = {**request, "token": 1}
    result = cli("node", "recover", node_root, "--request", json.dumps(stale))
    assert result.exit_code == 4 and "fencing token 1 for shard ANALYZE refused" in result.stderr
    result = cli("node", "recover", node_root, "--request", "[1]")
    assert result.exit_code == 1 and "must be a JSON object" in result.stderr


def test_recover_cursor_is_not_fooled_by_a_record_of_the_same_length(node_root: Path) -> None:
    """A torn COMMIT_PHASE cut away, then a new record that ends at exactly the old cursor: the WAL
    no longer holds that COMMIT, and the node must see its phase as open again."""
    import secrets

    from haios.wal import Wal
    from haios.wal.format import RECORD_HEADER_SIZE, encode_payload

    tx = Node(node_root).begin(1, "ANALYZE", participants=["n1"])
    tx.intent("a.conf", b"x\n")
    tx.prepare()
    tx.commit()
    state, _ = controlfile.read_mapping(node_root / "state.txt")
    cursor, start = state["wal_cursor"], state["wal_record_start"]
    size = cursor["offset"] - start
    segment = next((node_root / "wal").glob("*.wal"))
    with open(segment, "r+b") as fh:
        fh.truncate(start + 7)  # the COMMIT_PHASE record is torn
    with Wal.open(node_root / "wal") as wal:  # repairs the torn tail
        assert wal.position().offset == start
        base = {"node": "n1", "g": 1, "phase": "ANALYZE", "trace_id": "t", "ts": 1.0, "vc": {}, "token": 1}
        base |= {"shard": "ANALYZE", "step": "pad"}
        pad = ""
        while RECORD_HEADER_SIZE + len(encode_payload({**base, "outcome": pad})[0]) < size:
            pad += secrets.token_hex(1)[0]
        payload = {**base, "outcome": pad}
        if RECORD_HEADER_SIZE + len(encode_payload(payload)[0]) != size:
            pytest.skip("could not craft a record of exactly the torn one's length")
        wal.append(RecordType.RECOVERY, payload)
        assert wal.position().offset == cursor["offset"]  # the very same offset as before
    opened = Node(node_root).open_phase()
    assert opened is not None and (opened.g, opened.phase) == (1, "ANALYZE") and opened.prepared is not None
    assert recover.inspect(node_root, 1, "ANALYZE")["status"] == "prepared"


def test_recover_compensates_an_attempt_the_node_moved_past(node_root: Path) -> None:
    """A HARD_FAILED trace gave up on an aborted attempt's side effect; the node began (g, phase)
    again, under the same side-effect key, and committed it. A signed retry of the trace then
    compensates the first attempt: its COMPENSATED record belongs to that attempt, never to the
    second one (whose side effect is live), and running it again writes nothing."""
    tx = Node(node_root).begin(1, "ANALYZE", participants=["n1"], trace_id="first")
    tx.side_effect("k0", "fakecloud.vm", {"resource": "vm0"}, "fakecloud-vm", COST)
    tx.abort("coordinator abort")
    args = {"trace_id": "t", "token": 1, "g": 1, "phase": "ANALYZE"}
    recover.rollback(node_root, **args, reason="hard", abandon=["k0"])  # type: ignore[arg-type]
    later = Node(node_root).begin(1, "ANALYZE", participants=["n1"], trace_id="second")
    later.side_effect("k0", "fakecloud.vm", {"resource": "vm0"}, "fakecloud-vm", COST)
    later.intent("b.conf", b"b\n")
    later.prepare()
    later.commit()
    second = scan_phases(node_root)[(1, "ANALYZE")]
    assert (second.trace_id, second.ended, list(second.compensated)) == ("second", "COMMIT_PHASE", [])
    first = recover.compensated(node_root, **args, key="k0", result={}, from_lamport=1)  # type: ignore[arg-type]
    again = recover.compensated(node_root, **args, key="k0", result={}, from_lamport=1)  # type: ignore[arg-type]
    assert (first["outcome"], again["outcome"]) == ("compensated", "already compensated")
    kinds = [r.type for r in read_records(node_root / "wal")]
    assert kinds.count(RecordType.COMPENSATED) == 1  # idempotent: no second record
    info = recover.inspect(node_root, 1, "ANALYZE", from_lamport=1)
    assert (info["status"], info["begin_trace"]) == ("aborted", "first")
    assert [(e["key"], e["compensated"], e["abandoned"]) for e in info["side_effects"]] == [("k0", True, True)]
    assert "compensate:k0" in [step["step"] for step in info["recovery"]]
    now = scan_phases(node_root)[(1, "ANALYZE")]  # the latest attempt: its own k0 is not compensated
    assert (now.trace_id, list(now.compensated), now.uncompensated) == ("second", [], ["k0"])
