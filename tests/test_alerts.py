"""Alerts as data (status/alerts/): raised once when their state changes, resolved when their
condition ends, never repeated by an unchanged run — on a real simulated cluster and git repo."""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers import Invoke, at
from helpers.cluster import beat_at, git, gossip_at, head, plant
from ruamel.yaml import YAML

from haios import controlfile
from haios.alerts import ALERTS_DIR, RESOLVED_KEPT, recorded, sync
from haios.node.heartbeat import beat
from haios.ops import reconcile


def _never_compensates(cluster: Path) -> None:
    (cluster / "playbooks/fakecloud-vm.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: fakecloud-vm\ncompensates: fakecloud.vm\n"
        'run:\n  command: [sh, -c, "echo denied >&2; exit 3"]\nnon_retryable_exit_codes: [3]\ntimeout: 10s\n'
    )
    git(cluster, "commit", "-qam", "tests: a compensator that can never succeed")


def _states(cluster: Path) -> dict[str, str]:
    return {k: v["state"] for k, v in recorded(cluster).items()}


def test_an_alert_is_raised_once_resolved_once(cluster: Path) -> None:
    _never_compensates(cluster)
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    now = time.time()
    first = reconcile(cluster, clock=at(now))
    trace = first.outcomes[0].trace_id
    assert first.exit_code() == 3 and first.outcomes[0].after == "BLOCKED_COMPENSATOR"
    assert [(a["alert"], a["state"], a["severity"]) for a in first.alerts] == [
        ("sel_compensator_failed", "firing", "page")
    ]
    assert _states(cluster) == {f"sel_compensator_failed--{trace}": "firing"}
    doc = YAML(typ="safe").load((cluster / ALERTS_DIR / f"sel_compensator_failed--{trace}.yaml").read_text())
    assert doc["trace_id"] == trace and "denied" in doc["message"]
    assert f"{ALERTS_DIR}/sel_compensator_failed--{trace}.yaml" in git(cluster, "show", "--name-only", "HEAD")

    commit = head(cluster)
    again = reconcile(cluster, clock=beat_at(cluster, now + 60))  # nothing changed: nothing raised, nothing committed
    assert again.exit_code() == 3 and again.alerts == [] and head(cluster) == commit

    later = reconcile(cluster, clock=beat_at(cluster, now + 3601))  # T_blocked passed: HARD_FAILED
    assert later.outcomes[0].after == "HARD_FAILED"
    assert sorted((a["alert"], a["state"]) for a in later.alerts) == [
        ("compensator_timeout", "raised"),
        ("sel_compensator_failed", "resolved"),
    ]
    assert _states(cluster) == {
        f"sel_compensator_failed--{trace}": "resolved",
        f"compensator_timeout--{trace}": "raised",
    }
    message = git(cluster, "log", "-1", "--format=%B")
    assert "alert compensator_timeout (page) raised" in message
    assert "alert sel_compensator_failed (page) resolved" in message
    commit = head(cluster)
    assert (
        reconcile(cluster, clock=beat_at(cluster, now + 7200)).alerts == [] and head(cluster) == commit
    )  # raised once

    resolved = recorded(cluster)[f"sel_compensator_failed--{trace}"]
    assert resolved["resolved_ts"] == now + 3601  # the run's own clock, however long the run took
    assert sync(cluster, now + 3601 + RESOLVED_KEPT - 1) == []  # resolved, and kept a while
    assert f"sel_compensator_failed--{trace}" in _states(cluster)
    assert sync(cluster, now + 3601 + RESOLVED_KEPT + 1) == []  # resolved long ago: removed, quietly
    assert _states(cluster) == {f"compensator_timeout--{trace}": "raised"}


def test_awaiting_ack_and_membership_alerts(cluster: Path, cli: Invoke) -> None:
    state = cluster / "desired/state.yaml"
    state.write_text(state.read_text().replace("  ANALYZE:\n    on_partial: auto", "  ANALYZE:\n    on_partial: hold"))
    git(cluster, "commit", "-qam", "tests: hold ANALYZE")
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3
    assert "ALERT awaiting_ack (page): " in result.stdout and "on_partial is hold" in result.stdout
    result = cli("--repo", cluster, "-o", "ndjson", "reconcile")  # unchanged: no alert event this time
    assert not [line for line in result.stdout.splitlines() if json.loads(line)["type"] == "alert"]

    gossip = cluster / "nodes/node-3/gossip"
    body = {"node": "node-3", "peers": {}, "partition_status": "PARTITIONED", "since": "2026-01-01T00:00:00Z"}
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    now = time.time()
    reconcile(cluster, clock=gossip_at(cluster, now))
    pending = reconcile(cluster, clock=gossip_at(cluster, now + 31 * 60))  # isolated past the eviction TTL
    assert ("pending_eviction", "firing", "warning") in [
        (a["alert"], a["state"], a["severity"]) for a in pending.alerts
    ]
    body["partition_status"] = "NORMAL"
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    healed = reconcile(cluster, clock=gossip_at(cluster, now + 32 * 60))
    assert ("pending_eviction", "resolved") in [(a["alert"], a["state"]) for a in healed.alerts]
    assert _states(cluster)["pending_eviction--node-3"] == "resolved"


def test_agent_down_fires_once_with_its_event_and_resolves_when_it_beats_again(cluster: Path, cli: Invoke) -> None:
    """A member whose heartbeat is older than the heartbeat window (3 x 15 s here): an ``agent_down``
    alert, an ``agent.down`` event and a line of the audit commit, once; resolved when it beats again."""
    for name in ("node-2", "node-3"):
        beat(cluster / "nodes" / name, name)
    beat(cluster / "nodes/node-1", "node-1", time.time() - 75)  # node-1's agent stopped 75 s ago
    result = cli("--repo", cluster, "-o", "ndjson", "reconcile")
    assert result.exit_code == 0, result.output
    stream = [json.loads(line) for line in result.stdout.splitlines()]
    (down,) = [e for e in stream if e["type"] == "agent.down"]
    assert down["node"] == "node-1" and 75 <= down["age_s"] < 75 + 60 and "s ago (window 45 s)" in down["why"]
    assert _states(cluster) == {"agent_down--node-1": "firing"}
    assert "alert agent_down (warning) firing: node-1: last heartbeat " in git(cluster, "log", "-1", "--format=%B")
    commit = head(cluster)
    again = cli("--repo", cluster, "-o", "ndjson", "reconcile")
    assert "agent.down" not in again.stdout and head(cluster) == commit  # raised once
    for name in ("node-1", "node-2", "node-3"):
        beat(cluster / "nodes" / name, name)
    back = cli("--repo", cluster, "-o", "ndjson", "reconcile")
    assert back.exit_code == 0 and _states(cluster) == {"agent_down--node-1": "resolved"}
    resolved = [json.loads(line) for line in back.stdout.splitlines() if '"type":"alert"' in line]
    assert [(e["alert"], e["state"]) for e in resolved] == [("agent_down", "resolved")]
