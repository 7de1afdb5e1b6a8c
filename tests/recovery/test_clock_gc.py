"""Vector-clock GC (SPEC §7): a node decommissioned longer than the retention has its entry pruned by
reconcile once every active member has seen its last event, leaving a tombstone in status/; a log
that comes back under that name — ``haios wal import`` of an archive, a node rejoining — is checked
against the tombstone, and a mismatch is FORENSIC_MISMATCH (alert, exit 5, nothing merged)."""

from __future__ import annotations

import json
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

import yaml
from helpers import Invoke
from helpers.cluster import git

from haios import controlfile
from haios.config import load_repo
from haios.node import Node, init_node_root
from haios.recovery import clockgc
from haios.timefmt import utc
from haios.vclock import VClock
from haios.wal import RecordType, read_records

DAY = 86400.0


def _membership(cluster: Path, node: str, status: str, days_ago: int) -> None:
    path = cluster / "desired/state.yaml"
    doc = yaml.safe_load(path.read_text())
    entry = {"status": status}
    if status == "decommissioned":
        entry["since"] = (date.today() - timedelta(days=days_ago)).isoformat()
    doc["membership"][node] = entry
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    git(cluster, "commit", "-qam", f"tests: {node} {status}")


def _last(root: Path) -> tuple[int, VClock]:
    record = list(read_records(root / "wal"))[-1]
    return record.lamport, VClock.from_json(record.payload["vc"])


def _clock_of(cluster: Path, node: str) -> dict[str, int]:
    return _last(cluster / "nodes" / node)[1].to_json()


def _alerts(cluster: Path) -> list[str]:
    return sorted(p.name for p in (cluster / "status/alerts").glob("forensic_mismatch*.yaml"))


def _decommission_and_prune(cluster: Path, cli: Invoke) -> tuple[int, VClock]:
    """node-3 decommissioned 120 days ago, and a reconcile that prunes it; returns its last record's
    Lamport index and clock."""
    _membership(cluster, "node-3", "decommissioned", days_ago=120)
    final = _last(cluster / "nodes/node-3")
    assert all(_clock_of(cluster, n).get("node-3", 0) > 0 for n in ("node-1", "node-2"))
    result = cli("--repo", cluster, "-o", "json", "reconcile")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert [p["node"] for p in answer["vclock"]["pruned"]] == ["node-3"], answer["vclock"]
    return final


def test_reconcile_prunes_a_long_decommissioned_node_and_keeps_a_tombstone(cluster: Path, cli: Invoke) -> None:
    _membership(cluster, "node-3", "decommissioned", days_ago=30)  # within the retention: kept
    kept = json.loads(cli("--repo", cluster, "-o", "json", "reconcile").stdout)
    assert kept["vclock"] == {} and not (cluster / "status/vclock-tombstones.yaml").exists()

    _lamport, final = _decommission_and_prune(cluster, cli)
    stones = clockgc.load(cluster)
    stone = stones["node-3"].tombstone
    assert (stone.last_counter, stone.last_vc_hash) == (final.counter("node-3"), final.digest())
    assert stones["node-3"].source == "node-3"
    # every active member was made to see the final counter before the entry went
    for n in ("node-1", "node-2"):
        merged = [
            r.payload for r in read_records(cluster / f"nodes/{n}/wal") if r.payload.get("name") == "vclock.merged"
        ]
        assert merged and merged[-1]["counter"] == final.counter("node-3")
    # the tombstone is committed, the members hold a policy that names the pruned node
    log = git(cluster, "log", "-1", "--format=%B")
    assert "vclock: node-3's entry pruned" in log
    assert git(cluster, "status", "--porcelain").strip() == ""
    for n in ("node-1", "node-2"):
        policy, _ = controlfile.read_mapping(cluster / f"nodes/{n}/policy")
        assert policy["vclock_pruned"] == ["node-3"]
    assert load_repo(cluster).compile_policy()["vclock_pruned"] == ["node-3"]
    # from now on the members' clocks no longer carry it, whatever they merge
    node = Node(cluster / "nodes/node-1")
    node.append(1, "IDLE", "t", RecordType.EVENT, {"name": "test"}, seen=final)
    assert "node-3" not in _clock_of(cluster, "node-1") and "node-1" in _clock_of(cluster, "node-1")
    # a second run has nothing left to prune and commits nothing
    head = git(cluster, "rev-parse", "HEAD")
    again = json.loads(cli("--repo", cluster, "-o", "json", "reconcile").stdout)
    assert again["vclock"] == {} and again["exit_code"] == 0 and git(cluster, "rev-parse", "HEAD") == head


def test_a_member_that_cannot_see_the_final_clock_keeps_the_entry_and_says_why(cluster: Path, cli: Invoke) -> None:
    _membership(cluster, "node-3", "decommissioned", days_ago=120)
    gossip = cluster / "nodes/node-2/gossip"  # node-2's agent says PARTITIONED: its WAL is read-only
    body = {"node": "node-2", "peers": {}, "partition_status": "PARTITIONED", "since": utc(time.time())}
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    result = cli("--repo", cluster, "reconcile")
    assert "vclock: node-3's entry kept for now: not yet seen by every active member: node-2 (" in result.stdout
    assert "PARTITIONED" in result.stdout
    assert not (cluster / "status/vclock-tombstones.yaml").exists()


def test_the_final_clock_comes_from_a_replica_when_the_node_is_gone(cluster: Path, cli: Invoke) -> None:
    _lamport, final = _last(cluster / "nodes/node-3")
    replica = cluster / "nodes/node-1/replicas/node-3"
    shutil.copytree(cluster / "nodes/node-3/wal", replica)  # what WAL replication keeps on a peer
    shutil.rmtree(cluster / "nodes/node-3")
    _membership(cluster, "node-3", "decommissioned", days_ago=120)
    result = json.loads(cli("--repo", cluster, "-o", "json", "reconcile").stdout)
    assert [(p["node"], p["source"]) for p in result["vclock"]["pruned"]] == [("node-3", "node-1's replica")]
    assert clockgc.load(cluster)["node-3"].tombstone.last_vc_hash == final.digest()


def test_wal_import_checks_an_archive_against_the_tombstone(cluster: Path, cli: Invoke, tmp_path: Path) -> None:
    archive = tmp_path / "archive-node-3"
    shutil.copytree(cluster / "nodes/node-3/wal", archive)
    _decommission_and_prune(cluster, cli)

    # the node's own log, as it was when pruned: it matches and is kept
    result = cli("--repo", cluster, "-o", "json", "wal", "import", archive, "--node", "node-3")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["tombstone"] == "matches" and answer["outcome"] == "imported" and answer["commit"]
    kept = cluster / "archive/node-3/wal"
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in archive.glob("*.wal"))
    assert "haios wal import node-3" in git(cluster, "log", "-1", "--format=%s")
    again = cli("--repo", cluster, "wal", "import", archive, "--node", "node-3")
    assert again.exit_code == 0 and "already imported" in again.stdout

    # a log that went on after its tombstone was written: FORENSIC_MISMATCH, nothing merged
    longer = tmp_path / "longer"
    shutil.copytree(cluster / "nodes/node-3", longer)
    state, _ = controlfile.read_mapping(longer / "state.txt")
    Node(longer).append(state["g"], state["ph"], "t", RecordType.EVENT, {"name": "late"})
    shutil.rmtree(kept.parent.parent)
    git(cluster, "commit", "-qam", "tests: the archive removed")
    head = git(cluster, "rev-parse", "HEAD")
    bad = cli("--repo", cluster, "wal", "import", longer, "--node", "node-3")
    assert bad.exit_code == 5
    assert "FORENSIC_MISMATCH" in bad.output and "its tombstone at" in bad.output
    assert not (cluster / "archive").exists()
    assert _alerts(cluster) and git(cluster, "rev-parse", "HEAD") != head  # the alert, committed
    assert "FORENSIC_MISMATCH: node-3: nothing merged" in git(cluster, "log", "-1", "--format=%s")
    assert git(cluster, "status", "--porcelain").strip() == ""

    # another node's log, or an unknown name, is refused before any tombstone is read
    other = cli("--repo", cluster, "wal", "import", cluster / "nodes/node-1", "--node", "node-3")
    assert other.exit_code == 5 and "is 'node-1''s, not node-3's" in other.output
    live = cli("--repo", cluster, "wal", "import", archive, "--node", "node-1")
    assert live.exit_code == 1 and "not a decommissioned member" in live.output


def test_a_node_rejoining_under_a_decommissioned_name_must_match_its_tombstone(
    cluster: Path, cli: Invoke, tmp_path: Path
) -> None:
    original = tmp_path / "node-3.original"
    _decommission_and_prune(cluster, cli)
    shutil.copytree(cluster / "nodes/node-3", original)
    # a new machine given the old name: its log is not the one the tombstone recorded
    shutil.rmtree(cluster / "nodes/node-3")
    assert init_node_root(cluster / "nodes/node-3", "node-3", load_repo(cluster).compile_policy())
    _membership(cluster, "node-3", "active", days_ago=0)
    result = cli("--repo", cluster, "-o", "json", "node", "rejoin", "node-3")
    assert result.exit_code == 5, result.output
    assert "FORENSIC_MISMATCH" in result.output and "has no event of node-3" in result.output
    state, _ = controlfile.read_mapping(cluster / "nodes/node-3/state.txt")
    assert state["g"] == 0  # nothing merged: not caught up
    assert len(_alerts(cluster)) == 1
    assert clockgc.load(cluster)["node-3"].revived_at is None

    # the old machine, with the log its tombstone recorded, comes back: it matches and rejoins
    shutil.rmtree(cluster / "nodes/node-3")
    shutil.copytree(original, cluster / "nodes/node-3")
    back = cli("--repo", cluster, "-o", "json", "node", "rejoin", "node-3")
    assert back.exit_code == 0, back.output
    answer = json.loads(back.stdout)
    assert answer["revived"] is True
    assert clockgc.load(cluster)["node-3"].revived_at is not None
    assert "vclock_pruned" not in load_repo(cluster).compile_policy()  # its entry is kept again


def test_a_damaged_tombstone_record_is_one_finding_not_the_end_of_a_run(cluster: Path, cli: Invoke) -> None:
    _membership(cluster, "node-3", "decommissioned", days_ago=120)
    record = cluster / "status/vclock-tombstones.yaml"
    record.parent.mkdir(exist_ok=True)
    record.write_text("schema: haios-vclock-tombstones/v1\ntombstones:\n  node-3: {last_counter: -1}\n")
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0, result.output
    assert "vclock: nothing pruned:" in result.stdout and "the tombstone of 'node-3' is damaged" in result.stdout
    assert record.read_text().endswith("{last_counter: -1}\n")  # left for a human to restore
    doctor = json.loads(cli("--repo", cluster, "-o", "json", "doctor").stdout)
    assert any("vclock-tombstones.yaml" in f["summary"] for f in doctor["findings"])
