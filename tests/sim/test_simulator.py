"""The simulator end to end: real worker processes, faults, determinism, and sim check's invariants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import Invoke

from haios import controlfile
from haios.errors import CloudError, UsageError
from haios.sim.check import sim_check
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import log_fault, parse_faults, sim_dir, sim_init, sim_run
from haios.wal import RecordType, Wal, read_records


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 nodes, 20 iterations, no faults (the acceptance run); copy it before changing it."""
    directory = tmp_path_factory.mktemp("sim") / "sim1"
    sim_init(directory, 5)
    report = sim_run(directory, iterations=20, seed=1, faults={})
    assert report.committed == 100 and report.stopped_at is None
    return directory


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_sim_acceptance_clean_run_commits_every_iteration(cli: Invoke, clean_run: Path) -> None:
    result = cli("sim", "check", clean_run)
    assert (result.exit_code, result.stdout) == (0, f"{clean_run}: every invariant holds\n")
    for n in range(1, 6):
        state, _ = controlfile.read_mapping(clean_run / f"nodes/node-{n}/state.txt")
        assert (state["g"], state["ph"], state["status"]) == (20, "IDLE", "READY")


def test_sim_cli_kill_leaves_a_half_done_transition(cli: Invoke, tmp_path: Path) -> None:
    directory = tmp_path / "sim2"
    assert cli("sim", "init", directory, "--nodes", "5").exit_code == 0
    result = cli("sim", "run", directory, "--iterations", "20", "--seed", "1", "--faults", "kill=0.2")
    assert result.exit_code == 0 and "stopped at g=" in result.stdout
    result = cli("sim", "check", directory)
    assert result.exit_code == 2
    assert "[atomicity] node-" in result.stdout and "half done: no COMMIT_PHASE or ABORT_PHASE" in result.stdout


def _payloads(directory: Path) -> list[list[tuple[str, dict[str, object]]]]:
    out = []
    for n in sorted((directory / "nodes").iterdir()):
        out.append([(r.type.name, {k: v for k, v in r.payload.items() if k != "ts"}) for r in read_records(n / "wal")])
    return out


def test_sim_same_seed_same_run(tmp_path: Path) -> None:
    faults = parse_faults("kill=0.3,partition=0.3,compfail=0.5,cost=0.5")
    reports = []
    for name in ("a", "b"):
        sim_init(tmp_path / name, 3)
        reports.append(sim_run(tmp_path / name, iterations=3, seed=42, faults=faults))
    strip = [[{k: v for k, v in f.items() if k not in ("start", "end")} for f in r.faults] for r in reports]
    assert strip[0] == strip[1] and reports[0].stopped_at == reports[1].stopped_at
    assert _payloads(tmp_path / "a") == _payloads(tmp_path / "b")


def test_sim_run_refuses_a_cluster_needing_recovery(tmp_path: Path) -> None:
    from haios.errors import BlockedError

    sim_init(tmp_path / "s", 3)
    report = sim_run(tmp_path / "s", iterations=2, seed=1, faults={"kill": 1.0})
    assert report.stopped_at is not None
    with pytest.raises(BlockedError, match="half done|disagree"):
        sim_run(tmp_path / "s", iterations=1, seed=2, faults={})


@pytest.mark.parametrize(
    ("spec", "message"),
    [("explode=0.1", "unknown fault 'explode'"), ("kill=2", "outside"), ("kill=x", "not a probability")],
)
def test_sim_parse_faults_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_faults(spec)
    assert parse_faults("none") == {} and parse_faults("kill,torn=0.5") == {"kill": 1.0, "torn": 0.5}


# -- sim check catches each invariant when it is planted ---------------------------------------------


def test_check_atomicity_planted(clean_run: Path, tmp_path: Path) -> None:
    directory = _copy(clean_run, tmp_path / "s")
    wal = directory / "nodes/node-2/wal"
    segment = sorted(wal.glob("*.wal"))[-1]
    last = list(read_records(wal))[-1]
    assert last.type is RecordType.COMMIT_PHASE
    with open(segment, "r+b") as fh:
        fh.truncate(last.offset)  # node-2 loses its last COMMIT
    violations = sim_check(directory)
    assert [str(v) for v in violations] == [
        "[atomicity] node-2 g=20 IDLE: half done: no COMMIT_PHASE or ABORT_PHASE (PREPARE present)"
    ]


def test_check_compensation_planted(clean_run: Path, tmp_path: Path) -> None:
    directory = _copy(clean_run, tmp_path / "s")
    root = directory / "nodes/node-1"
    from haios.node import Node

    tx = Node(root).begin(21, "ANALYZE", participants=["node-1"])
    tx.side_effect("k-planted", "fakecloud.vm", {"resource": "vm-x"}, "fakecloud-vm", {"amount": 1, "currency": "EUR"})
    tx.prepare()
    tx.abort("planted")
    violations = [str(v) for v in sim_check(directory)]
    assert (
        "[compensation] node-1 g=21 ANALYZE: side effect k-planted of a rolled-back phase compensated 0 times"
        in violations
    )
    cloud = FakeCloud(sim_dir(directory) / "cloud")
    cloud.delete("fakecloud.vm", "vm-x", "k-planted", "node-1")
    assert not [v for v in sim_check(directory) if v.invariant == "compensation"]
    assert cloud.delete("fakecloud.vm", "vm-x", "k-planted", "node-1")["replayed"]  # same key: the stored result
    assert not [v for v in sim_check(directory) if v.invariant == "compensation"]
    # a compensator that ignored its idempotency key would leave a second successful delete in the ledger
    ledger = sim_dir(directory) / "cloud/ledger.jsonl"
    last = ledger.read_text().splitlines()[-1]
    with open(ledger, "a", encoding="utf-8") as fh:
        fh.write(last + "\n")
    assert "compensated 2 times" in str([v for v in sim_check(directory) if v.invariant == "compensation"][0])


def test_check_barrier_planted(clean_run: Path, tmp_path: Path) -> None:
    directory = _copy(clean_run, tmp_path / "s")
    root = directory / "nodes/node-4"
    with Wal.open(root / "wal") as wal:  # a BEGIN of g=21 dated before g=20 IDLE ended everywhere
        wal.append(
            RecordType.BEGIN_PHASE,
            {
                "node": "node-4",
                "g": 21,
                "phase": "ANALYZE",
                "snapshot": "21-ANALYZE",
                "participants": ["node-4"],
                "ts": 1.0,
            },
        )
    violations = [str(v) for v in sim_check(directory)]
    assert "[barrier] node-4 g=21 ANALYZE: began before (g=20, IDLE) had ended on every node" in violations


def test_check_partition_planted(clean_run: Path, tmp_path: Path) -> None:
    directory = _copy(clean_run, tmp_path / "s")
    some = list(read_records(directory / "nodes/node-3/wal"))[10]
    ts = some.payload["ts"]
    log_fault(directory, fault="partition", g=1, phase="ANALYZE", nodes=["node-3"], start=ts, end=ts)
    violations = [v for v in sim_check(directory) if v.invariant == "partition"]
    assert violations and {v.node for v in violations} == {"node-3"}
    assert any(f"(lamport {some.lamport}, {some.type.name}) while PARTITIONED" in v.detail for v in violations)


def test_check_control_files_planted(clean_run: Path, tmp_path: Path) -> None:
    directory = _copy(clean_run, tmp_path / "s")
    path = directory / "nodes/node-5/state.txt"
    data = bytearray(path.read_bytes())
    data[3] ^= 1
    path.write_bytes(bytes(data))
    violations = [str(v) for v in sim_check(directory)]
    assert (
        len(violations) == 1 and violations[0].startswith("[control-files] node-5: ") and "state.txt" in violations[0]
    )


def test_check_audit_planted(clean_run: Path, tmp_path: Path) -> None:
    directory = _copy(clean_run, tmp_path / "s")
    with Wal.open(directory / "nodes/node-1/wal") as wal:
        wal.append(
            RecordType.RECOVERY,
            {"node": "node-1", "trace_id": "t-unaudited", "token": 1, "shard": "IDLE", "step": "plan", "outcome": "ok"},
        )
    violations = [str(v) for v in sim_check(directory)]
    assert violations == ["[audit] recovery trace t-unaudited has no commit in the audit log"]


def test_check_json_output(cli: Invoke, clean_run: Path) -> None:
    data = json.loads(cli("sim", "check", clean_run, "-o", "json").stdout)
    assert data == {"directory": str(clean_run), "ok": True, "violations": []}


# -- the fake cloud -------------------------------------------------------------------------------------


def test_cloud_ledger_failures_and_costs(tmp_path: Path) -> None:
    cloud = FakeCloud(tmp_path / "cloud")
    assert cloud.create("fakecloud.vm", "vm-1", "k1", "n1")["cost"] == 12.0
    cloud.set_faults({"fail": {"delete": {"fakecloud.vm": 2}}, "cost_multiplier": 10})
    for _ in range(2):
        with pytest.raises(CloudError, match="injected"):
            cloud.delete("fakecloud.vm", "vm-1", "k1", "n1")
    assert cloud.delete("fakecloud.vm", "vm-1", "k1", "n1")["existed"] is True
    assert cloud.delete("fakecloud.vm", "vm-never", "k2", "n1")["existed"] is False  # never happened: fine
    assert cloud.create("fakecloud.dns", "d", "k3", "n1")["cost"] == 5.0
    ops = [(e["op"], e["ok"]) for e in cloud.ledger()]
    assert ops == [
        ("create", True),
        ("delete", False),
        ("delete", False),
        ("delete", True),
        ("delete", True),
        ("create", True),
    ]


def test_cloud_delete_command_for_playbooks(cli: Invoke, tmp_path: Path) -> None:
    result = cli(
        "sim", "cloud", "delete", "--dir", tmp_path / "c", "--kind", "fakecloud.dns", "--resource", "r", "--key", "k"
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True
