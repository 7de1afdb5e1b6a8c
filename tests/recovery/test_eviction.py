"""Isolated nodes and eviction (SPEC §4.7) across simulated cron runs, and ``haios node rejoin``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import Invoke, at
from helpers.cluster import git, gossip_at, plant, quick_cluster
from jsonschema import Draft202012Validator

from haios import controlfile
from haios.config import load_repo
from haios.errors import BlockedError
from haios.ops import reconcile
from haios.ops.rejoin import rejoin
from haios.recovery.membership import load, participants
from haios.sim.check import sim_check
from haios.sim.simulator import sim_run
from haios.timefmt import utc

MIN = 60.0
SCHEMAS = Path(__file__).parent.parent.parent / "schemas"


def _partition(cluster: Path, node: str, since: float | None) -> None:
    """Set the node's gossip to PARTITIONED since ``since`` (None: NORMAL again)."""
    path = cluster / "nodes" / node / "gossip"
    body = {
        "node": node,
        "peers": {},
        "partition_status": "NORMAL" if since is None else "PARTITIONED",
        "since": utc(since if since is not None else time.time()),
    }
    controlfile.write_mapping(path, body, expected_version=controlfile.current_version(path))


def _positions(cluster: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for n in ("node-1", "node-2", "node-3"):
        state, _ = controlfile.read_mapping(cluster / "nodes" / n / "state.txt")
        out[n] = (state["g"], state["ph"])
    return out


def test_isolated_node_is_evicted_after_ttl_and_grace_then_rejoins(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-3": 1})
    t0 = time.time()
    _partition(cluster, "node-3", t0)
    first = reconcile(cluster, clock=gossip_at(cluster, t0))
    assert first.exit_code() == 3 and first.outcomes[0].after == "BLOCKED"
    assert load(cluster).nodes["node-3"]["why"] == "its gossip says PARTITIONED"
    assert first.next_due == pytest.approx(t0 + 30 * MIN)  # when it becomes pending

    pending = reconcile(cluster, clock=gossip_at(cluster, t0 + 31 * MIN))
    m = load(cluster)
    assert pending.exit_code() == 3 and pending.plan.membership["pending_eviction"] == ["node-3"]
    assert [a["alert"] for a in m.alerts] == ["pending_eviction"]
    assert pending.next_due == pytest.approx(t0 + 46 * MIN)  # the 15-min grace
    assert reconcile(cluster, clock=gossip_at(cluster, t0 + 40 * MIN)).exit_code() == 3  # still in its grace
    assert [a["alert"] for a in load(cluster).alerts] == ["pending_eviction"]  # raised once

    # after the grace: 2 of 3 members healthy is a majority, so node-3 is evicted and the blocked
    # trace goes on without it (node-1 and node-2 both PREPAREd: roll forward)
    evicted = reconcile(cluster, clock=gossip_at(cluster, t0 + 47 * MIN))
    assert evicted.exit_code() == 0, evicted.to_json()
    m = load(cluster)
    assert m.evicted == {"node-3"} and m.minority_evictions_total == 1
    assert [a["alert"] for a in m.alerts] == ["pending_eviction", "node_evicted"]
    (outcome,) = evicted.outcomes
    assert (outcome.verdict, outcome.before, outcome.after) == ("forward", "BLOCKED", "CLEAN_EXIT")
    assert _positions(cluster)["node-1"] == (2, "ANALYZE")
    assert participants(cluster, load_repo(cluster)) == ["node-1", "node-2"]
    shown = cli("--repo", cluster, "plan").stdout
    assert f"evicted: node-3 (takes no part until: haios --repo {cluster} node rejoin node-3)" in shown
    doctor = cli("--repo", cluster, "-o", "json", "doctor")
    report = json.loads(doctor.stdout)
    Draft202012Validator(json.loads((SCHEMAS / "doctor-report.schema.json").read_text())).validate(report)
    kinds = {(f["kind"], tuple(f["nodes"])) for f in report["findings"]}
    assert ("evicted", ("node-3",)) in kinds and not [k for k in kinds if k[0] == "wal_gap"]  # rejoin, not reconcile
    assert {n["node"]: n["health"] for n in report["nodes"]}["node-3"] == "EVICTED"
    assert (
        reconcile(cluster, clock=gossip_at(cluster, t0 + 48 * MIN)).exit_code() == 0
    )  # evicted: node-3's open phase is not ours

    # the cluster goes on without it
    report = sim_run(cluster, iterations=1, seed=5, faults={})
    assert report.committed == 5 and report.last == (3, "ANALYZE")

    # rejoin refuses while it is still isolated, then rolls back its half-done phase and catches up
    with pytest.raises(BlockedError, match="node-3 is still isolated"):
        rejoin(cluster, "node-3")
    _partition(cluster, "node-3", None)
    result = cli("--repo", cluster, "node", "rejoin", "node-3")
    assert result.exit_code == 0, result.output
    assert "node-3 rejoined: caught up 6 transitions to g=3 ANALYZE" in result.stdout
    assert "g=2 ANALYZE: INTERRUPTED -> CLEAN_EXIT" in result.stdout
    assert _positions(cluster) == {n: (3, "ANALYZE") for n in ("node-1", "node-2", "node-3")}
    m = load(cluster)
    assert m.evicted == set() and m.alerts[-1]["alert"] == "node_rejoined"
    assert sim_check(cluster) == []  # its side effect was compensated; every transition atomic
    report = sim_run(cluster, iterations=1, seed=6, faults={})  # all three take part again
    assert report.committed == 5
    result = cli("--repo", cluster, "node", "rejoin", "node-3")
    assert result.exit_code == 1 and "node-3 is not evicted" in result.output


def test_eviction_refused_when_no_healthy_majority_would_remain(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    t0 = time.time()
    for node in ("node-2", "node-3"):  # reachable by the reconciler, but cut off from their peers
        _partition(cluster, node, t0)
    assert reconcile(cluster, clock=gossip_at(cluster, t0)).exit_code() == 3
    assert reconcile(cluster, clock=gossip_at(cluster, t0 + 31 * MIN)).plan.membership["pending_eviction"] == [
        "node-2",
        "node-3",
    ]
    refused = reconcile(cluster, clock=gossip_at(cluster, t0 + 47 * MIN))
    m = load(cluster)
    assert refused.exit_code() == 3 and m.evicted == set() and m.minority_evictions_total == 0
    assert refused.plan.membership["eviction_blocked"] == ["node-2", "node-3"]
    pages = [a for a in m.alerts if a["alert"] == "eviction_blocked"]
    assert [a["node"] for a in pages] == ["node-2", "node-3"]
    assert "only 1 of 3 members are healthy, not a majority" in pages[0]["message"]
    reconcile(cluster, clock=gossip_at(cluster, t0 + 60 * MIN))
    assert len([a for a in load(cluster).alerts if a["alert"] == "eviction_blocked"]) == 2  # paged once each
    assert _positions(cluster)["node-1"] == (1, "IDLE")  # nothing moved

    # one of them heals: node-3 may now be evicted (2 of 3 healthy)
    _partition(cluster, "node-2", None)
    healed = reconcile(cluster, clock=gossip_at(cluster, t0 + 61 * MIN))
    assert load(cluster).evicted == {"node-3"} and healed.plan.membership["eviction_blocked"] == []
    assert load(cluster).nodes.get("node-2") is None  # its isolation is forgotten


def test_a_short_partition_is_forgotten(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    t0 = time.time()
    _partition(cluster, "node-3", t0)
    reconcile(cluster, clock=at(t0))
    _partition(cluster, "node-3", None)
    healed = reconcile(cluster, clock=at(t0 + 20 * MIN))
    assert healed.exit_code() == 0 and load(cluster).nodes == {}
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    _partition(cluster, "node-3", t0 + 25 * MIN)  # a new isolation starts its own clock
    reconcile(cluster, clock=at(t0 + 25 * MIN))
    assert reconcile(cluster, clock=at(t0 + 50 * MIN)).plan.membership["pending_eviction"] == []


def test_one_eviction_per_partition_window_the_others_deferred(tmp_path: Path, cli: Invoke) -> None:
    """Five members, two isolated at once: 3 of 5 healthy would allow both, but one is evicted per
    partition window (the longest isolated first); the other is deferred — a finding — and evicted
    by the first run a window later."""
    cluster = quick_cluster(tmp_path / "cluster", 5)
    t0 = time.time()
    _partition(cluster, "node-5", t0 - 10)  # isolated a little longer: the first to go
    _partition(cluster, "node-4", t0)
    reconcile(cluster, clock=gossip_at(cluster, t0))
    reconcile(cluster, clock=gossip_at(cluster, t0 + 31 * MIN))
    assert load(cluster).pending == ["node-4", "node-5"]

    first = reconcile(cluster, clock=gossip_at(cluster, t0 + 47 * MIN))
    m = load(cluster)
    assert m.evicted == {"node-5"} and m.deferred == ["node-4"] and m.minority_evictions_total == 1
    assert first.plan.membership["eviction_deferred"] == ["node-4"]
    assert first.next_due == pytest.approx(t0 + 47 * MIN + 45)  # when the window has passed
    message = git(cluster, "log", "-1", "--format=%B")
    assert "membership: node-4 is due for eviction, but a member was evicted 0 s ago: at most one eviction" in message
    doctor = cli("--repo", cluster, "-o", "json", "doctor")
    (deferred,) = [f for f in json.loads(doctor.stdout)["findings"] if f["kind"] == "eviction_deferred"]
    assert (
        deferred["nodes"] == ["node-4"]
        and deferred["fix"]
        == f"haios --repo {cluster} reconcile   # evicts it once the window has passed, if it is still isolated"
    )

    within = reconcile(cluster, clock=gossip_at(cluster, t0 + 47 * MIN + 30))  # still within the window
    assert load(cluster).evicted == {"node-5"} and within.commit is None  # deferred still, said once

    later = reconcile(cluster, clock=gossip_at(cluster, t0 + 47 * MIN + 46))
    m = load(cluster)
    assert m.evicted == {"node-4", "node-5"} and m.deferred == [] and m.minority_evictions_total == 2
    assert later.plan.membership["eviction_deferred"] == []
    assert [a["node"] for a in m.alerts if a["alert"] == "node_evicted"] == ["node-5", "node-4"]
