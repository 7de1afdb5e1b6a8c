"""A node root deleted, or deleted and made again (re-provisioned): one finding for the node, never
one per transition it once took part in, and no trace per transition in the plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import Invoke
from helpers.cluster import positions

from haios.config import load_repo
from haios.node import init_node_root


def _findings(cli: Invoke, cluster: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    report = json.loads(cli("--repo", cluster, "doctor", "-o", "json").stdout)
    return sorted((f["kind"], f["severity"], tuple(f["nodes"])) for f in report["findings"])


def test_a_re_provisioned_root_is_one_finding_and_rejoin_catches_it_up(cluster: Path, cli: Invoke) -> None:
    root = cluster / "nodes/node-3"
    shutil.rmtree(root)
    assert init_node_root(root, "node-3", load_repo(cluster).compile_policy())
    assert _findings(cli, cluster) == [
        ("heartbeat_never", "info", ("node-3",)),  # the new root has done nothing yet
        ("node_behind", "critical", ("node-3",)),
    ]
    doctor = cli("--repo", cluster, "doctor")
    assert doctor.exit_code == 2
    assert (
        "CRITICAL node_behind node-3: node-3 has no record of 5 transitions its peers committed with it "
        "(g=1 ANALYZE to g=1 IDLE): its root was deleted or re-provisioned"
    ) in doctor.stdout
    assert f"fix: haios --repo {cluster} node rejoin node-3   # catches it up with its peers" in doctor.stdout
    plan = json.loads(cli("--repo", cluster, "plan", "-o", "json").stdout)
    assert plan["traces"] == [] and plan["exit_code"] == 0
    # the fix, as printed
    result = cli("--repo", cluster, "node", "rejoin", "node-3")
    assert result.exit_code == 0, result.output
    assert "node-3 rejoined: caught up 5 transitions to g=1 IDLE" in result.stdout
    assert positions(cluster)["node-3"] == (1, "IDLE")
    assert not [f for f in _findings(cli, cluster) if f[0] == "node_behind"]


def test_a_deleted_root_is_one_finding(cluster: Path, cli: Invoke) -> None:
    shutil.rmtree(cluster / "nodes/node-3")
    assert _findings(cli, cluster) == [("unreachable", "critical", ("node-3",))]
    plan = cli("--repo", cluster, "plan")
    assert "every transition is committed" not in plan.stdout
    assert "nothing is known of node-3" in plan.stdout
    assert json.loads(cli("--repo", cluster, "plan", "-o", "json").stdout)["traces"] == []
