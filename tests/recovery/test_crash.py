"""A reconciler killed at any point is resumed, not restarted (SPEC §4.1, issue acceptance).

For one fixed faulty cluster (a rollback with three compensations), the reconcile process is
SIGKILLed after each of its checkpoints in turn, and between each compensator's success and its
record; the next run must finish the same trace, reach exactly the state an uninterrupted run
reaches, and no compensator may have succeeded twice for one key.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import subprocs
from helpers.cluster import deletes, plant

from haios import controlfile
from haios.audit import history
from haios.ops import reconcile
from haios.recovery.journal import JOURNAL_DIR, load
from haios.sim.check import sim_check
from haios.wal import RecordType, read_records

KILLER = Path(__file__).parent.parent / "helpers" / "killer.py"
KEYS = {"key-node-1-0": 1, "key-node-1-1": 1, "key-node-2-0": 1}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, clean_cluster: Path) -> Path:
    target = tmp_path_factory.mktemp("crash") / "faulty"
    shutil.copytree(clean_cluster, target, symlinks=True)
    plant(target, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 2, "node-2": 1})
    shutil.rmtree(target / "status", ignore_errors=True)  # no observation cache: every copy starts cold
    return target


def _final(directory: Path) -> dict[str, Any]:
    nodes = {}
    for root in sorted((directory / "nodes").iterdir()):
        state, _ = controlfile.read_mapping(root / "state.txt")
        data = {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}
        nodes[root.name] = {"g": state["g"], "ph": state["ph"], "status": state["status"], "data": data}
    journals = [load(p) for p in sorted((directory / JOURNAL_DIR).glob("*.yaml"))]
    return {
        "nodes": nodes,
        "journals": [(j.state, j.decision) for j in journals],
        "deletes": deletes(directory),
    }


def _recovery_traces(directory: Path) -> set[str]:
    return {
        r.payload["trace_id"]
        for root in (directory / "nodes").iterdir()
        for r in read_records(root / "wal")
        if r.type is RecordType.RECOVERY
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, faulty: Path) -> dict[str, Any]:
    target = tmp_path_factory.mktemp("crash") / "uninterrupted"
    shutil.copytree(faulty, target, symlinks=True)
    result = reconcile(target)
    assert result.exit_code() == 0
    final = _final(target)
    assert final["deletes"] == KEYS and final["journals"] == [("CLEAN_EXIT", "rollback")]
    assert len(_recovery_traces(target)) == 1
    return final


KILL_POINTS = [("after-checkpoint", n) for n in range(1, 7)] + [("before-compensated", n) for n in range(1, 4)]


@pytest.mark.parametrize(("point", "n"), KILL_POINTS, ids=[f"{p}-{n}" for p, n in KILL_POINTS])
def test_crash_reconciler_killed_is_resumed_not_restarted(
    tmp_path: Path, faulty: Path, uninterrupted: dict[str, Any], point: str, n: int
) -> None:
    directory = tmp_path / "cluster"
    shutil.copytree(faulty, directory, symlinks=True)
    killed = subprocs.run(
        [sys.executable, str(KILLER), point, str(n), "--repo", str(directory), "reconcile"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    (trace_id,) = _recovery_traces(directory) or {None}
    if point == "after-checkpoint":
        assert trace_id is not None  # at least one step was checkpointed before the kill
    result = reconcile(directory)
    assert result.exit_code() == 0, result.to_json()
    assert _final(directory) == uninterrupted
    traces = _recovery_traces(directory)
    assert len(traces) == 1 and (trace_id is None or traces == {trace_id})  # the same trace, resumed
    (outcome,) = result.outcomes
    assert outcome.trace_id in traces
    assert [t["trace_id"] for e in history(directory) for t in e.traces] == [outcome.trace_id]
    assert sim_check(directory) == []
