"""Phase transactions on a real node root: guards, snapshot, intents, resume, crash safety."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from helpers import subprocs
from helpers.executor import POINTS

from haios import controlfile
from haios.errors import (
    BarrierError,
    DataDriftError,
    FencedError,
    PartitionError,
    PathEscapeError,
    VersionConflict,
    WalReadOnlyError,
)
from haios.node import (
    Node,
    apply_intents,
    check_fence,
    init_node_root,
    manifest,
    next_transition,
    scan_phases,
    snapshot,
)
from haios.timefmt import parse_utc
from haios.wal import RecordType, read_records, repair, verify

PROJECT = Path(__file__).parent.parent.parent


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    root = tmp_path / "n1"
    init_node_root(root, "n1", {"cluster": "c", "max_g": None})
    return root


def _run(node: Node, g: int, phase: str, files: dict[str, bytes | None]) -> None:
    with node.begin(g, phase, participants=[node.name]) as tx:
        for path, content in files.items():
            tx.intent(path, content)
        tx.prepare()
        tx.commit()


def test_transaction_commit_updates_state_data_and_exec_status(node_root: Path) -> None:
    node = Node(node_root, clock=lambda: 1_790_000_000.5)
    _run(node, 1, "ANALYZE", {"etc/a.conf": b"a\n"})
    state, _ = node.state()
    assert (state["g"], state["ph"], state["status"]) == (1, "ANALYZE", "READY")
    assert (node_root / "data/etc/a.conf").read_bytes() == b"a\n"
    status, _ = controlfile.read_mapping(node_root / "exec_status_1.txt")
    assert status == {
        "g": 1,
        "phase": "ANALYZE",
        "status": "DONE",
        "started_at": "2026-09-21T14:13:20.500Z",
        "updated_at": "2026-09-21T14:13:20.500Z",
    }
    types = [r.type for r in read_records(node_root / "wal")]
    assert types == [RecordType.BEGIN_PHASE, RecordType.INTENT, RecordType.PREPARE, RecordType.COMMIT_PHASE]
    assert not (node_root / "snapshots/1-ANALYZE").exists()  # dropped once committed
    payload = next(iter(read_records(node_root / "wal"))).payload
    assert payload["node"] == "n1" and payload["vc"] == {"n1": 1} and payload["participants"] == ["n1"]


@pytest.mark.parametrize("earlier", [False, True])
def test_an_end_writes_exec_status_a_kill_after_begin_never_wrote(node_root: Path, earlier: bool) -> None:
    """Killed between BEGIN_PHASE and the exec status file's write: the abort (or commit) that ends
    the phase writes the file whole, for this phase — not one of an earlier phase of the iteration."""
    node = Node(node_root, clock=lambda: 1_790_000_000.5)
    if earlier:
        _run(node, 1, "ANALYZE", {})
    phase = "BLUEPRINT" if earlier else "ANALYZE"
    node.begin(1, phase, participants=["n1"]).close()
    if earlier:  # the file is still ANALYZE's: as if the kill came before BLUEPRINT's write
        controlfile.write_mapping(
            node_root / "exec_status_1.txt",
            {"g": 1, "phase": "ANALYZE", "status": "DONE", "started_at": "x", "updated_at": "x"},
            expected_version=controlfile.current_version(node_root / "exec_status_1.txt"),
        )
    else:
        (node_root / "exec_status_1.txt").unlink()
    node.resume(1, phase).abort("its executor was killed")
    status, _ = controlfile.read_mapping(node_root / "exec_status_1.txt")
    assert (status["phase"], status["status"]) == (phase, "FAILED")
    assert node.open_phase() is None


def test_transaction_phase_order_through_iterations(node_root: Path) -> None:
    node = Node(node_root)
    assert next_transition(0, None) == (1, "ANALYZE")
    for g in (1, 2):
        for phase in ("ANALYZE", "BLUEPRINT", "CONSTRUCT", "VALIDATE", "IDLE"):
            _run(node, g, phase, {})
    assert node.state()[0]["g"] == 2 and node.state()[0]["ph"] == "IDLE"


def test_transaction_barrier_guard(node_root: Path) -> None:
    node = Node(node_root)
    with pytest.raises(BarrierError, match=r"\(g=1, BLUEPRINT\) would break the phase order.*next is \(g=1, ANALYZE\)"):
        node.begin(1, "BLUEPRINT", participants=["n1"])
    with pytest.raises(BarrierError, match="next is"):
        node.begin(2, "ANALYZE", participants=["n1"])
    assert not list(read_records(node_root / "wal"))


def test_transaction_open_phase_blocks_a_new_begin(node_root: Path) -> None:
    node = Node(node_root)
    node.begin(1, "ANALYZE", participants=["n1"]).close()
    with pytest.raises(BarrierError, match="still open"):
        node.begin(1, "ANALYZE", participants=["n1"])


def test_transaction_max_g_guard(node_root: Path) -> None:
    controlfile.write_mapping(node_root / "policy", {"cluster": "c", "max_g": 0}, expected_version=1)
    with pytest.raises(BarrierError, match="beyond max_g=0"):
        Node(node_root).begin(1, "ANALYZE", participants=["n1"])


def test_transaction_partition_guard_and_read_only_wal(node_root: Path) -> None:
    controlfile.write_mapping(
        node_root / "gossip",
        {"node": "n1", "peers": {}, "partition_status": "PARTITIONED", "since": "2026-11-26T00:00:00.000Z"},
        expected_version=None,
    )
    written = parse_utc("2026-11-26T00:00:00.000Z")
    node = Node(node_root, clock=lambda: written + 10)  # its gossip writer rewrote it 10 s ago
    with pytest.raises(PartitionError, match="PARTITIONED") as info:
        node.begin(1, "ANALYZE", participants=["n1"])
    assert info.value.exit_code == 3
    with pytest.raises(WalReadOnlyError):
        node._wal().append(RecordType.STEP, {"name": "x", "outcome": "y"})
    # nobody has rewritten it for longer than the heartbeat window (45 s by default): no verdict
    later = Node(node_root, clock=lambda: written + 46)
    assert not later.partitioned()
    _run(later, 1, "ANALYZE", {})


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "", "a//b", "./a"])
def test_transaction_path_escape_refused(node_root: Path, path: str) -> None:
    with Node(node_root).begin(1, "ANALYZE", participants=["n1"]) as tx, pytest.raises(PathEscapeError):
        tx.intent(path, b"x")


def test_transaction_symlink_escape_refused(node_root: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", node_root / "data/link")
    with (
        Node(node_root).begin(1, "ANALYZE", participants=["n1"]) as tx,
        pytest.raises(PathEscapeError, match="symlink"),
    ):
        tx.intent("link/file", b"x")
    assert list((tmp_path / "outside").iterdir()) == []


def test_transaction_refuses_to_overwrite_data_changed_underneath(node_root: Path) -> None:
    node = Node(node_root)
    tx = node.begin(1, "ANALYZE", participants=["n1"])
    tx.intent("f", b"mine\n")
    (node_root / "data/f").write_bytes(b"theirs\n")  # someone else, outside any phase
    with pytest.raises(DataDriftError, match=r"data/f: a file is there \(changed outside any phase\)"):
        tx.prepare()
    tx.close()
    assert (node_root / "data/f").read_bytes() == b"theirs\n"  # nothing lost


def test_transaction_version_conflict_when_another_phase_wrote_first(node_root: Path) -> None:
    node = Node(node_root)
    _run(node, 1, "ANALYZE", {"f": b"one"})
    tx = node.begin(1, "BLUEPRINT", participants=["n1"])
    tx.intent("f", b"two", expected_version=None)  # written as if the file were new
    with pytest.raises(VersionConflict, match="expected absent, found v1"):
        tx.prepare()
    tx.close()


def test_transaction_abort_restores_snapshot(node_root: Path) -> None:
    node = Node(node_root)
    _run(node, 1, "ANALYZE", {"keep": b"1\n", "drop/me": b"2\n"})
    before = {p.relative_to(node_root / "data"): p.read_bytes() for p in (node_root / "data").rglob("*") if p.is_file()}
    tx = node.begin(1, "BLUEPRINT", participants=["n1"])
    tx.intent("keep", b"changed\n")
    tx.intent("drop/me", None)
    tx.intent("new/file", b"3\n")
    tx.prepare()
    assert not (node_root / "data/drop/me").exists()
    tx.abort("validation failed")
    after = {p.relative_to(node_root / "data"): p.read_bytes() for p in (node_root / "data").rglob("*") if p.is_file()}
    assert after == before
    assert node.state()[0]["ph"] == "ANALYZE"
    assert controlfile.read_mapping(node_root / "exec_status_1.txt")[0]["status"] == "FAILED"
    _run(node, 1, "BLUEPRINT", {})  # the same phase can be tried again


def test_transaction_resume_knows_what_is_logged(node_root: Path) -> None:
    node = Node(node_root)
    tx = node.begin(1, "ANALYZE", participants=["n1"], trace_id="t-1")
    tx.step("download", "ok")
    tx.intent("a", b"1\n")
    tx.side_effect("vm-1", "fakecloud.vm", {"size": "s"}, "fakecloud-vm", {"amount": 1, "currency": "EUR"})
    tx.close()  # the executor crashed here
    resumed = Node(node_root).resume(1, "ANALYZE")
    assert resumed.completed_steps == {"download": "ok"}
    assert [i["path"] for i in resumed.intents] == ["a"]
    assert set(resumed.log.side_effects) == {"vm-1"} and resumed.log.trace_id == "t-1"
    resumed.step("build", "ok")
    resumed.prepare()
    resumed.commit()
    assert scan_phases(node_root)[(1, "ANALYZE")].ended == "COMMIT_PHASE"
    with pytest.raises(BarrierError, match="nothing to resume"):
        Node(node_root).resume(1, "ANALYZE")


def test_transaction_side_effect_same_key_other_params_is_an_error(node_root: Path) -> None:
    from haios.errors import HaiosError

    with Node(node_root).begin(1, "ANALYZE", participants=["n1"]) as tx:
        tx.side_effect("k", "kind", {"a": 1}, "c", {"amount": 0, "currency": "EUR"})
        tx.side_effect("k", "kind", {"a": 1}, "c", {"amount": 0, "currency": "EUR"})  # same: fine
        with pytest.raises(HaiosError, match="other parameters"):
            tx.side_effect("k", "kind", {"a": 2}, "c", {"amount": 0, "currency": "EUR"})


def test_fence_refuses_stale_tokens(node_root: Path) -> None:
    assert check_fence(node_root, "CONSTRUCT", 5) == 5
    assert check_fence(node_root, "CONSTRUCT", 5) == 5
    assert check_fence(node_root, "ANALYZE", 1) == 1
    with pytest.raises(FencedError, match="token 4 for shard CONSTRUCT refused; token 5 was accepted") as info:
        check_fence(node_root, "CONSTRUCT", 4)
    assert info.value.exit_code == 4
    assert controlfile.read_mapping(node_root / "fence")[0] == {"shards": {"CONSTRUCT": 5, "ANALYZE": 1}}


def test_snapshot_is_hard_links_and_restore_is_idempotent(node_root: Path) -> None:
    data = node_root / "data"
    for i in range(20):
        controlfile.write(data / f"f{i}", f"{i}\n".encode(), expected_version=None)
    snap, written = snapshot.take(node_root, "1-ANALYZE")
    assert os.stat(snap / "f3").st_ino == os.stat(data / "f3").st_ino
    assert written == os.stat(snap).st_size  # one directory; the 20 files are links and write no data
    controlfile.write(data / "f3", b"changed\n", expected_version=1)
    (data / "f4").unlink()
    (data / "extra").mkdir()
    (data / "extra/x").write_bytes(b"x")
    assert snapshot.restore(node_root, "1-ANALYZE") == 4  # f3, f4, extra/x, extra/
    assert snapshot.restore(node_root, "1-ANALYZE") == 0
    assert controlfile.read(data / "f3").body == b"3\n" and (data / "f4").exists() and not (data / "extra").exists()


def _files(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in data.rglob("*") if p.is_file()}


def _seed(root: Path, files: dict[str, bytes]) -> None:
    """data/ files as if an earlier phase had written them (bytes and manifest)."""
    intents = [
        {"path": k, "op": "write", "expected_version": None, "sha256": hashlib.sha256(v).hexdigest()}
        for k, v in files.items()
    ]
    manifest.apply(root, intents, lambda intent: files[intent["path"]])


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_step_leaves_exactly_one_way_out(tmp_path: Path, point: str) -> None:
    root = tmp_path / "n1"
    init_node_root(root, "n1", {"cluster": "c", "max_g": None})
    _seed(root, {"etc/a.conf": b"old a\n", "old.txt": b"obsolete\n"})
    original = _files(root / "data")
    intended = {"etc/a.conf": b"new a\n", "etc/b.conf": b"brand new b\n"}
    env = {**os.environ, "PYTHONPATH": f"{PROJECT}{os.pathsep}{PROJECT / 'tests'}", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocs.run(
        [sys.executable, str(PROJECT / "tests/helpers/executor.py"), str(root), point], env=env, timeout=60
    )
    assert proc.returncode == (0 if point == "none" else -9)
    if not verify(root / "wal").ok:
        repair(root / "wal")
    log = scan_phases(root).get((1, "ANALYZE"))
    assert log is not None  # BEGIN_PHASE is durable before anything else happens
    if log.prepared is not None:
        # roll forward from the WAL alone, idempotently
        apply_intents(root / "data", log.intents)
        assert apply_intents(root / "data", log.intents) == 0
        assert _files(root / "data") == intended
        assert manifest.check(root) == []  # the manifest names exactly these bytes
        assert point in ("after_prepare_record", "mid_apply", "after_apply", "after_commit_record", "none")
    else:
        # roll back: nothing was applied and the snapshot is intact
        assert _files(root / "data") == original
        assert _files(root / "snapshots/1-ANALYZE") == original
        snapshot.restore(root, "1-ANALYZE")
        assert _files(root / "data") == original and manifest.check(root) == []
        assert point in ("after_begin", "after_first_intent", "after_intents", "after_side_effect")
    if point == "after_side_effect":
        assert set(log.side_effects) == {"vm-1"}  # logged before the call: recovery will compensate it


def test_transaction_one_intent_per_file(node_root: Path) -> None:
    from haios.errors import HaiosError

    with Node(node_root).begin(1, "ANALYZE", participants=["n1"]) as tx:
        tx.intent("a", b"1\n")
        with pytest.raises(HaiosError, match="already has an intent"):
            tx.intent("a", None)


def test_transaction_delete_of_a_missing_file_is_a_no_op(node_root: Path) -> None:
    node = Node(node_root)
    _run(node, 1, "ANALYZE", {"never-there": None})
    assert not (node_root / "data/never-there").exists()
