"""Reconcilers at once: one acts per shard, the others exit 4; a stale one is fenced on every write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocs
from helpers.cluster import deletes, plant

from haios.errors import FencedError
from haios.node import recover
from haios.ops import reconcile
from haios.recovery.journal import JOURNAL_DIR, load
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import sim_dir

KILLER = Path(__file__).parent.parent / "helpers" / "killer.py"


def test_concurrency_four_reconcilers_one_acts(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    FakeCloud(sim_dir(cluster) / "cloud").set_faults({"slow": 2.0})  # the compensator takes a while
    procs = [
        subprocs.spawn(
            [sys.executable, "-m", "haios", "--repo", str(cluster), "reconcile"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    acted = [r for r in results if r[0] == 0 and "CLEAN_EXIT" in r[1]]
    locked = [r for r in results if r[0] == 4]
    late = [r for r in results if r[0] == 0 and "nothing to do" in r[1]]
    assert len(acted) == 1, results
    assert len(locked) + len(late) == 3 and len(locked) >= 2, results
    for _code, out, _ in locked:
        assert "shard ANALYZE is held by" in out
    (journal,) = [load(p) for p in (cluster / JOURNAL_DIR).glob("*.yaml")]
    assert journal.tokens == [1] and journal.state == "CLEAN_EXIT"
    assert deletes(cluster) == {"key-node-1-0": 1}


def test_concurrency_taken_over_reconciler_is_fenced_on_every_write(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 2})
    killed = subprocs.run(
        [sys.executable, str(KILLER), "after-checkpoint", "1", "--repo", str(cluster), "reconcile"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9
    result = reconcile(cluster)  # takes the dead holder's lease over: token 2
    assert result.exit_code() == 0 and result.outcomes[0].token == 2
    stale = {"trace_id": result.outcomes[0].trace_id, "token": 1, "g": 2, "phase": "ANALYZE"}
    for node in ("node-1", "node-2", "node-3"):
        for op, extra in (
            ("forward", {}),
            ("rollback", {"reason": "stale"}),
            ("compensated", {"key": "key-node-1-0", "result": {}}),
            ("repair", {}),
            ("checkpoint", {"step": "x", "outcome": "ok"}),
        ):
            with pytest.raises(FencedError, match="fencing token 1 for shard ANALYZE refused; token 2 was accepted"):
                recover.dispatch(cluster / "nodes" / node, {"op": op, **stale, **extra})
