"""One trace id per incident: the same in doctor, plan, plan --out, reconcile and audit, derived from
the transition (g, phase and its participants' BEGIN_PHASE records), never a fresh random suffix."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from helpers import Invoke
from helpers.cluster import plant

from haios.audit import history
from haios.ops import build
from haios.recovery.journal import incident_trace_id


def test_one_incident_has_one_trace_id_everywhere(cluster: Path, cli: Invoke, tmp_path: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    twin = tmp_path / "twin"
    shutil.copytree(cluster, twin, symlinks=True)  # the same incident, seen from another checkout
    ids = {build(cluster)[0].traces[0].trace_id for _ in range(3)}
    assert len(ids) == 1
    (trace_id,) = ids
    assert trace_id.startswith("2-analyze-") and build(twin)[0].traces[0].trace_id == trace_id
    doctor = json.loads(cli("--repo", cluster, "doctor", "-o", "json").stdout)
    named = {f["evidence"].get("trace_id") for f in doctor["findings"] if f["g"] == 2}
    assert named == {trace_id}
    assert {f["evidence"].get("phase_trace_id") for f in doctor["findings"] if f["kind"] == "wal_gap"} == {
        "phase-2-analyze"
    }
    out = tmp_path / "plan.json"
    assert cli("--repo", cluster, "plan", "--out", out).exit_code == 2
    assert [t["trace_id"] for t in json.loads(out.read_text())["traces"]] == [trace_id]
    ran = json.loads(cli("--repo", cluster, "reconcile", "--plan", out, "-o", "json").stdout)
    assert [o["trace_id"] for o in ran["traces"]] == [trace_id]
    assert [t["trace_id"] for t in history(cluster, trace_id=trace_id)[0].traces] == [trace_id]
    assert trace_id in cli("--repo", cluster, "audit", "--trace", trace_id).stdout


def test_another_attempt_or_an_ended_trace_gives_another_id() -> None:
    begins = [("node-1", 40, "p"), ("node-2", 41, "p")]
    first = incident_trace_id(2, "ANALYZE", begins)
    assert first == incident_trace_id(2, "ANALYZE", list(reversed(begins)))  # order does not matter
    assert incident_trace_id(2, "ANALYZE", [("node-1", 90, "p"), ("node-2", 91, "p")]) != first  # begun anew
    assert incident_trace_id(2, "ANALYZE", begins, taken=[first]) == f"{first}-2"
    assert incident_trace_id(2, "ANALYZE", begins, taken=[first, f"{first}-2"]) == f"{first}-3"


def test_status_never_cuts_a_trace_id(cluster: Path, cli: Invoke) -> None:
    """On a narrow terminal the other columns fold; the id an override needs stays whole on one line."""
    from haios import controlfile
    from haios.ops import reconcile
    from haios.timefmt import utc

    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    gossip = cluster / "nodes/node-3/gossip"
    now = utc(time.time())
    body = {"node": "node-3", "peers": {}, "partition_status": "PARTITIONED", "since": now, "updated_at": now}
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    (outcome,) = reconcile(cluster).outcomes
    assert outcome.after == "BLOCKED"
    for width in ("60", "100"):
        shown = cli("--repo", cluster, "status", env={"COLUMNS": width}).stdout
        assert any(outcome.trace_id in line for line in shown.splitlines()), shown
