"""haios doctor and status on real simulated clusters: each fault is reported as exactly that fault."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import Invoke
from helpers.wal import flip
from jsonschema import Draft202012Validator

from haios import controlfile
from haios.ops.doctor import run_doctor
from haios.resources import schema
from haios.sim.simulator import parse_faults, sim_init, sim_run
from haios.timefmt import utc


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("doc") / "ok"
    sim_init(directory, 5)
    sim_run(directory, iterations=2, seed=7, faults={})
    return directory


def _fresh_copy(healthy: Path, directory: Path) -> Path:
    """A copy of the healthy cluster whose nodes have just beaten (however long ago it was made)."""
    from haios.node.heartbeat import beat

    shutil.copytree(healthy, directory)
    for root in sorted((directory / "nodes").iterdir()):
        beat(root, root.name, time.time())
    return directory


def _sim(tmp_path: Path, faults: str, seed: int = 7, nodes: int = 5) -> Path:
    directory = tmp_path / "sim"
    sim_init(directory, nodes)
    sim_run(directory, iterations=2, seed=seed, faults=parse_faults(faults))
    return directory


def _partitioned(root: Path, *, written: float) -> None:
    """node-2's gossip: every peer silent, PARTITIONED, last rewritten at ``written``."""
    controlfile.write_mapping(
        root / "gossip",
        {
            "node": "node-2",
            "peers": {f"node-{i}": None for i in (1, 3, 4, 5)},
            "partition_status": "PARTITIONED",
            "since": utc(written),
            "updated_at": utc(written),
        },
        expected_version=controlfile.current_version(root / "gossip"),
    )


def _kinds(report: object) -> list[str]:
    return sorted(f"{f.kind}:{','.join(f.nodes)}:{f.g}:{f.phase}" for f in report.findings)  # type: ignore[attr-defined]


def test_doctor_acceptance_kill_names_node_g_phase_with_phi(cli: Invoke, tmp_path: Path) -> None:
    directory = _sim(tmp_path, "kill=1", seed=7)
    time.sleep(1.6)  # past the ANALYZE timeout of the simulator's priors (k x P95 = 1.46 s)
    result = cli("--repo", directory, "doctor")
    assert result.exit_code == 2
    assert "CRITICAL wal_gap node-5 g=1 ANALYZE: BEGIN_PHASE without COMMIT/ABORT" in result.stdout
    for evidence in ("begin_lamport: 1", "phase_trace_id: sim-7-1-ANALYZE", "timeout_s: 1.458", "phi: "):
        assert evidence in result.stdout
    assert f"fix: haios --repo {directory} reconcile   # rolls g=1 ANALYZE back on node-5" in result.stdout
    data = json.loads(cli("--repo", directory, "doctor", "-o", "json").stdout)
    Draft202012Validator(schema("doctor-report")).validate(data)
    assert [(f["kind"], f["nodes"], f["g"], f["phase"]) for f in data["findings"]] == [
        ("wal_gap", ["node-5"], 1, "ANALYZE")
    ]


def test_doctor_healthy_cluster_exits_zero(cli: Invoke, healthy: Path, tmp_path: Path) -> None:
    directory = _fresh_copy(healthy, tmp_path / "ok")
    result = cli("--repo", directory, "doctor")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.rstrip().endswith(f"{directory}: healthy (5 nodes)")
    data = json.loads(cli("--repo", directory, "doctor", "-o", "json").stdout)
    Draft202012Validator(schema("doctor-report")).validate(data)
    assert data["healthy"] is True and len(data["nodes"]) == 5 and {n["health"] for n in data["nodes"]} == {"OK"}
    status = json.loads(cli("--repo", directory, "status", "-o", "json").stdout)
    assert [n["g"] for n in status["nodes"]] == [2] * 5


def test_doctor_coordinator_death_is_a_partial_commit(tmp_path: Path) -> None:
    directory = tmp_path / "sim"
    sim_init(directory, 3)
    report = sim_run(directory, iterations=1, seed=13, faults={"kill": 1.0})  # seed 13: the coordinator dies
    kill = next(f for f in report.faults if f["fault"] == "kill")
    assert (kill["point"], kill["commits"]) == ("after_some_commits", 1)
    doctor = run_doctor(directory, now=time.time() + 10)
    assert {f.kind for f in doctor.findings} == {"partial_commit"}
    f = doctor.findings[0]
    assert all("PREPARE present, no COMMIT_PHASE" in v for v in f.evidence["missing"].values())
    assert "reconcile   # rolls g=" in f.fix and "forward" in f.fix


def test_doctor_torn_tail_and_bitflip(tmp_path: Path) -> None:
    torn = _sim(tmp_path / "a", "torn=1", seed=3)
    kinds = {f.kind for f in run_doctor(torn, now=time.time() + 10).findings}
    assert "wal_torn_tail" in kinds and kinds <= {"wal_torn_tail", "partial_commit", "wal_gap"}
    flipped = _sim(tmp_path / "b", "bitflip=1", seed=3)
    report = run_doctor(flipped, now=time.time() + 10)
    corrupt = [f for f in report.findings if f.kind == "wal_corrupt"]
    assert corrupt and corrupt[0].severity == "critical" and "repair --force" in corrupt[0].fix
    assert any(row.health == "CORRUPT" for row in report.nodes)


def test_doctor_partition_and_heartbeat_loss(healthy: Path, tmp_path: Path) -> None:
    directory = _fresh_copy(healthy, tmp_path / "p")
    root = directory / "nodes/node-2"
    now = time.time()
    _partitioned(root, written=now)
    assert _kinds(run_doctor(directory, now=now)) == ["partition:node-2:None:None"]
    later = run_doctor(directory, now=now + 100)  # nobody beat for 100 s, but the previous pass was 100 s ago
    assert not later.convicted  # the local-pause rule: the silences this observer measured are held back
    assert {f.kind for f in later.findings} == {"heartbeat_loss"} and not later.counted
    assert not later.healthy and later.exit_code() == 2  # held back is still listed, still exit 2
    last = run_doctor(directory, now=now + 110)
    assert last.convicted and {f.kind for f in last.counted} >= {"heartbeat_loss"}


def test_doctor_from_cron_convicts_a_killed_node_on_every_pass(cli: Invoke, tmp_path: Path) -> None:
    """doctor run by cron (minutes apart) on a cluster with a killed node: the node's own WAL is
    proof on every pass; the pause rule holds back only the heartbeat silences doctor measured."""
    directory = _sim(tmp_path, "kill=1", seed=7)
    # 5 s: past the ANALYZE timeout of the simulator's priors (1.46 s); then passes 61 s and 75 s apart
    with helpers.time_shifted(5):
        first = cli("--repo", directory, "doctor")
    with helpers.time_shifted(5 + 61):
        second = cli("--repo", directory, "doctor", "-o", "json")
    with helpers.time_shifted(5 + 61 + 75):
        third = cli("--repo", directory, "doctor")
    assert (first.exit_code, second.exit_code, third.exit_code) == (2, 2, 2)
    for text in (first.stdout, third.stdout):
        assert "CRITICAL wal_gap node-5 g=1 ANALYZE" in text and "healthy" not in text.splitlines()[-1]
    data = json.loads(second.stdout)
    assert data["healthy"] is False and data["convicted"] is False and "held back" in data["pause_reason"]
    counted = {f["kind"]: f["counted"] for f in data["findings"]}
    assert counted["wal_gap"] is True  # the node's own WAL convicts on every pass
    assert counted["heartbeat_loss"] is False  # the silence doctor measured across its own 61-s gap waits
    assert "WARNING (held back) heartbeat_loss node-5" in third.stdout


def test_doctor_stale_gossip_is_no_partition(cli: Invoke, healthy: Path, tmp_path: Path) -> None:
    """A PARTITIONED gossip file nobody rewrites any more (its writer stopped) while the node beats:
    one gossip_stale warning, no partition, and neither plan nor the node itself count it."""
    from haios.node.transaction import Node
    from haios.ops import build

    directory = _fresh_copy(healthy, tmp_path / "g")
    root = directory / "nodes/node-2"
    now = time.time()
    _partitioned(root, written=now - 600)
    result = cli("--repo", directory, "doctor")
    assert result.exit_code == 2
    assert "WARNING gossip_stale node-2: gossip not updated for 600 s (it still says PARTITIONED)" in result.stdout
    assert "partition" not in _kinds(run_doctor(directory))
    assert not Node(root).partitioned()
    plan, _ = build(directory)
    assert plan.exit_code() == 0 and not plan.traces


def test_doctor_exec_sla(healthy: Path, tmp_path: Path) -> None:
    directory = _fresh_copy(healthy, tmp_path / "s")
    state = directory / "desired/state.yaml"
    state.write_text(
        state.read_text().replace("  IDLE:\n    on_partial: auto", "  IDLE:\n    on_partial: auto\n    sla: 100ms")
    )
    root = directory / "nodes/node-1"
    now = time.time()
    controlfile.write_mapping(
        root / "exec_status_3.txt",
        {"g": 3, "phase": "IDLE", "status": "IN_PROGRESS", "started_at": utc(now - 0.5), "updated_at": utc(now - 0.5)},
        expected_version=None,
    )
    kinds = _kinds(run_doctor(directory, now=now))
    # the new SLA is not on the nodes yet (no reconcile since): a policy_stale each, said apart
    assert [k for k in kinds if not k.startswith("policy_stale:")] == ["exec_sla:node-1:3:IDLE"]
    assert len(kinds) == 6


def test_doctor_second_pass_reads_only_new_bytes(tmp_path: Path) -> None:
    directory = tmp_path / "sim"
    sim_init(directory, 3)
    sim_run(directory, iterations=2, seed=1, faults={})
    for own in (directory / "nodes").glob("*/wal/.summary.json"):
        own.unlink()  # without the nodes' own summaries, the first pass reads every record
    first = run_doctor(directory)
    wal_bytes = sum(p.stat().st_size - 64 for p in (directory / "nodes").glob("*/wal/*.wal"))
    assert first.bytes_read == wal_bytes
    assert run_doctor(directory).bytes_read == 0
    sim_run(directory, iterations=1, seed=2, faults={})
    grown = sum(p.stat().st_size - 64 for p in (directory / "nodes").glob("*/wal/*.wal"))
    third = run_doctor(directory)
    assert third.bytes_read == grown - wal_bytes and third.healthy


def _verdicts(report: Any) -> tuple[Any, ...]:
    nodes = sorted((r.node, r.health, r.wal, r.records, r.last_lamport) for r in report.nodes)
    return (report.healthy, nodes, sorted((f.key, f.severity, f.summary) for f in report.findings))


def test_doctor_first_pass_starts_from_each_nodes_own_wal_summary(healthy: Path, tmp_path: Path) -> None:
    directory = _fresh_copy(healthy, tmp_path / "s")
    shutil.rmtree(directory / "status" / "observed", ignore_errors=True)
    now = time.time() + 10
    own = run_doctor(directory, now=now)
    assert own.bytes_read == 0  # every node's writer left its summary, and every byte still matches it
    shutil.rmtree(directory / "status" / "observed")
    for summary in (directory / "nodes").glob("*/wal/.summary.json"):
        summary.unlink()
    full = run_doctor(directory, now=now)
    assert full.bytes_read > 0 and _verdicts(full) == _verdicts(own)
    assert all(row.records > 0 for row in own.nodes)


def test_doctor_finds_a_flipped_byte_below_a_nodes_own_summary(healthy: Path, tmp_path: Path) -> None:
    directory = _fresh_copy(healthy, tmp_path / "f")
    shutil.rmtree(directory / "status" / "observed", ignore_errors=True)
    first = sorted((directory / "nodes/node-2/wal").glob("*.wal"))[0]
    flip(first, first.stat().st_size // 2, 0x10)
    report = run_doctor(directory, now=time.time() + 10)
    assert [f.nodes for f in report.findings if f.kind == "wal_corrupt"] == [("node-2",)]


def test_doctor_invalid_repo_is_a_config_finding(cli: Invoke, healthy: Path, tmp_path: Path) -> None:
    directory = _fresh_copy(healthy, tmp_path / "bad")
    (directory / "policies/thresholds.yaml").write_text(
        (directory / "policies/thresholds.yaml").read_text().replace("phi:\n", "phi:\n  k: 5\n")
    )
    result = cli("--repo", directory, "doctor")
    assert result.exit_code == 2 and "config" in result.stdout and "phi.k: must be at most 2.0" in result.stdout


def test_the_report_schema_names_every_finding_kind_and_health_doctor_can_emit() -> None:
    """A report that validates today must validate whatever doctor finds: every kind haios builds a
    Finding with, and every health label, is in the schema's enums."""
    import ast
    import json

    package = Path(__file__).resolve().parents[2] / "haios"
    schema = json.loads((package.parent / "schemas/doctor-report.schema.json").read_text())
    kinds = set(schema["properties"]["findings"]["items"]["properties"]["kind"]["enum"])
    healths = set(schema["properties"]["nodes"]["items"]["properties"]["health"]["enum"])
    emitted: set[str] = set()
    labels: set[str] = set()
    for path in [*package.glob("ops/*.py"), *package.glob("detect/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    emitted.add(first.value)
                elif isinstance(first, ast.IfExp):  # "wal_torn_tail" if torn else "wal_corrupt"
                    emitted |= {c.value for c in (first.body, first.orelse) if isinstance(c, ast.Constant)}
            if isinstance(node, ast.FunctionDef) and node.name == "_health":
                labels |= {
                    c.value
                    for c in ast.walk(node)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.isupper()
                }
    assert len(emitted) > 30 and emitted <= kinds, sorted(emitted - kinds)
    assert labels and labels <= healths, sorted(labels - healths)
