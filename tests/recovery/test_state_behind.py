"""state.txt that does not know of a phase its WAL ended.

A node that dies between COMMIT_PHASE (or ABORT_PHASE) and the rewrite of state.txt leaves a WAL
that says more than state.txt: ``doctor`` warns, the node refuses to begin the next phase (it would
run the committed one twice), and ``reconcile`` finishes the rewrite. An older state.txt put back
(a node root restored in part) is critical and waits for a human's signed resume override.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Invoke
from helpers.cluster import plant, positions
from helpers.overrides import signed_override, supervisors

from haios import controlfile
from haios.errors import StateBehindError
from haios.node import Node
from haios.ops import build, reconcile
from haios.ops.doctor import run_doctor
from haios.sim.check import sim_check
from haios.wal import RecordType


def _die_after_commit(cluster: Path, node: str) -> None:
    """node takes (2, ANALYZE) to COMMIT_PHASE in its WAL and dies before rewriting state.txt."""
    tx = Node(cluster / "nodes" / node).begin(
        2, "ANALYZE", participants=["node-1", "node-2", "node-3"], trace_id="phase-2-analyze"
    )
    tx.intent(f"analyze/{node}.conf", b"planted\n")
    tx.prepare()
    tx._append(RecordType.COMMIT_PHASE, {"digest": tx.log.prepared})
    tx.close()


def _kinds(cluster: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {f.kind: (f.severity, f.nodes) for f in run_doctor(cluster).findings if f.kind.startswith("state_")}


def test_a_crash_between_commit_and_state_txt_is_finished_by_reconcile(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="commit", node_3="none", settle=False)
    _die_after_commit(cluster, "node-3")
    assert positions(cluster)["node-3"] == (1, "IDLE")  # state.txt still says the last transition
    assert _kinds(cluster) == {"state_behind_wal": ("warning", ("node-3",))}
    with pytest.raises(StateBehindError) as refused:
        Node(cluster / "nodes/node-3").begin(2, "ANALYZE", participants=["node-3"])  # it would run it twice
    assert "haios reconcile" in refused.value.hint

    plan = cli("--repo", cluster, "-o", "json", "plan")
    assert plan.exit_code == 2, plan.output
    (trace,) = json.loads(plan.stdout)["traces"]
    assert (trace["g"], trace["phase"], trace["verdict"]) == (2, "ANALYZE", "forward")
    assert [(s["node"], s["action"], s["force"]) for s in trace["steps"]] == [("node-3", "settle", False)]

    result = reconcile(cluster)
    assert result.exit_code() == 0, result.outcomes
    assert positions(cluster) == {n: (2, "ANALYZE") for n in ("node-1", "node-2", "node-3")}
    state, _ = controlfile.read_mapping(cluster / "nodes/node-3/state.txt")
    assert state["status"] == "READY" and state["wal_cursor"]["lamport"] > 0
    assert _kinds(cluster) == {} and build(cluster)[0].traces == [] and sim_check(cluster) == []
    Node(cluster / "nodes/node-3").begin(2, "BLUEPRINT", participants=["node-3"]).close()  # and it goes on


def test_an_older_state_txt_waits_for_a_signed_resume(cluster: Path, cli: Invoke, tmp_path: Path) -> None:
    keys = supervisors(cluster, tmp_path)
    old = (cluster / "nodes/node-2/state.txt").read_bytes()
    plant(cluster, node_1="commit", node_2="commit", node_3="commit", settle=False)
    for node in ("node-1", "node-2", "node-3"):
        tx = Node(cluster / "nodes" / node).begin(2, "BLUEPRINT", participants=["node-1", "node-2", "node-3"])
        tx.prepare()
        tx.commit()
    (cluster / "nodes/node-2/state.txt").write_bytes(old)  # a node root restored in part: state.txt of before
    assert _kinds(cluster) == {"state_older_than_wal": ("critical", ("node-2",))}
    with pytest.raises(StateBehindError):
        Node(cluster / "nodes/node-2").begin(2, "ANALYZE", participants=["node-2"])

    result = reconcile(cluster)
    assert result.exit_code() == 3
    (outcome,) = result.outcomes
    assert (outcome.phase, outcome.after) == ("BLUEPRINT", "AWAITING_ACK") and "older than the WAL" in outcome.reason
    assert (cluster / "nodes/node-2/state.txt").read_bytes() == old  # nothing rewritten without a human

    signed_override(cli, cluster, keys, outcome.trace_id, "resume", ("alice", "bob"))
    result = reconcile(cluster)
    assert result.exit_code() == 0, result.outcomes
    assert positions(cluster)["node-2"] == (2, "BLUEPRINT")
    assert _kinds(cluster) == {}
