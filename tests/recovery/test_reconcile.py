"""plan / reconcile / audit end to end: a real simulated cluster, a real fake cloud, a real git repo."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers import Invoke, at, subprocs
from helpers.cluster import deletes, git, head, plant, positions

from haios import controlfile
from haios.audit import history
from haios.coord import GitBackend
from haios.node.heartbeat import beat
from haios.ops import build, reconcile
from haios.recovery.journal import JOURNAL_DIR, find
from haios.sim.check import sim_check
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import sim_dir
from haios.timefmt import utc
from haios.wal import read_records


def _changed(directory: Path, since: str) -> list[str]:
    """The files the commits after ``since`` changed."""
    done = subprocs.run(
        ["git", "diff", "--name-only", since, "HEAD"], cwd=directory, capture_output=True, text=True, check=True
    )
    return sorted(done.stdout.split())


def _journal_file(directory: Path) -> Path:
    (path,) = sorted((directory / JOURNAL_DIR).glob("*.yaml"))
    return path


def test_reconcile_rolls_forward_a_partial_commit(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    result = cli("--repo", cluster, "plan")
    assert result.exit_code == 2
    assert "g=2 ANALYZE  trace 2-analyze-" in result.stdout and "forward (INTERRUPTED)" in result.stdout
    assert "1. node-2  forward: replay intents idempotently, COMMIT_PHASE" in result.stdout
    assert "exit 2: changes pending" in result.stderr
    before = head(cluster)
    assert head(cluster) == before  # plan commits nothing
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert re.search(
        r"g=2 ANALYZE  trace (2-analyze-\w+)  INTERRUPTED -> CLEAN_EXIT  \(rolled forward, 2 steps, token 1\)",
        result.stdout,
    )
    assert positions(cluster) == {n: (2, "ANALYZE") for n in ("node-1", "node-2", "node-3")}
    assert (cluster / "nodes/node-3/data/analyze/node-3.conf").read_bytes() == b"planted on node-3\n"
    assert sim_check(cluster) == []
    # the audit commit: status files and the journal, trailers git itself can parse
    commit = head(cluster)
    assert commit != before
    files = subprocs.run(
        ["git", "show", "--name-only", "--format=", commit], cwd=cluster, capture_output=True, text=True, check=True
    ).stdout.split()
    assert files == ["status/cluster.yaml", str(_journal_file(cluster).relative_to(cluster))]
    message = subprocs.run(
        ["git", "log", "-1", "--format=%B"], cwd=cluster, capture_output=True, text=True, check=True
    ).stdout
    trailers = subprocs.run(
        ["git", "interpret-trailers", "--parse"], input=message, cwd=cluster, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    trace_id = _journal_file(cluster).stem
    assert trailers[:3] == [f"Haios-Trace-Id: {trace_id}", "Haios-Result: CLEAN_EXIT", "Haios-Fencing-Token: 1"]
    assert trailers[3].startswith("Haios-Observed-Hash: sha256:")
    assert message.startswith("haios reconcile: rolled forward g=2 ANALYZE\n")
    # a run that changes nothing commits nothing
    result = cli("--repo", cluster, "reconcile")
    assert (result.exit_code, head(cluster)) == (0, commit)
    assert "nothing to do" in result.stdout
    assert cli("--repo", cluster, "plan").exit_code == 0


def test_reconcile_rolls_back_compensating_first(cluster: Path) -> None:
    data_before = sorted(p.name for p in (cluster / "nodes/node-1/data").rglob("*") if p.is_file())
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 2, "node-2": 1})
    assert "node-1.conf" in [p.name for p in (cluster / "nodes/node-1/data").rglob("*")]  # PREPARE applied it
    result = reconcile(cluster)
    assert result.exit_code() == 0
    (outcome,) = result.outcomes
    assert (outcome.verdict, outcome.before, outcome.after, outcome.steps) == (
        "rollback",
        "INTERRUPTED",
        "CLEAN_EXIT",
        6,
    )
    assert deletes(cluster) == {"key-node-1-0": 1, "key-node-1-1": 1, "key-node-2-0": 1}
    assert sorted(p.name for p in (cluster / "nodes/node-1/data").rglob("*") if p.is_file()) == data_before
    assert positions(cluster) == {n: (1, "IDLE") for n in ("node-1", "node-2", "node-3")}
    journal = find(cluster, outcome.trace_id)
    assert journal is not None
    done = [(s["node"], s["action"], s.get("key")) for s in journal.steps]
    # node-2's side effect is concurrent with node-1's (the test_causal tests order causally related ones)
    compensations = [step for step in done[:3] if step[0] == "node-1"]
    assert compensations == [
        ("node-1", "compensate", "key-node-1-1"),  # reverse order of logging
        ("node-1", "compensate", "key-node-1-0"),
    ]
    assert ("node-2", "compensate", "key-node-2-0") in done[:3]
    assert done[3:] == [
        ("node-1", "rollback", None),  # state rewound only after every compensation
        ("node-2", "rollback", None),
        ("node-3", "rollback", None),
    ]
    assert sim_check(cluster) == []


def test_reconcile_waits_for_the_phi_timeout(cluster: Path, cli: Invoke) -> None:
    thresholds = cluster / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    ANALYZE: 10ms", "    ANALYZE: 10m"))
    git(cluster, "commit", "-qam", "a 10-minute ANALYZE prior")  # reconcile acts on the committed desired state
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", settle=False)
    before = head(cluster)
    result = cli("--repo", cluster, "--output", "json", "plan")
    data = json.loads(result.stdout)
    assert result.exit_code == 2
    (trace,) = data["traces"]
    assert trace["verdict"] == "wait" and trace["wait_until"] > time.time()
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 2 and "the Φ timeout" in result.stdout
    # the one thing done: the new prior reached the nodes (and the audit trail says so)
    assert _changed(cluster, before) == ["status/cluster.yaml", "status/policy.yaml"]
    assert not (cluster / JOURNAL_DIR).exists()
    # an hour later (the reconciler's clock moved), it rolls back
    assert reconcile(cluster, clock=at(time.time() + 3600)).exit_code() == 0


def test_reconcile_executes_exactly_its_plan_and_refuses_a_stale_one(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    plan_file = cluster.parent / "plan.json"
    assert cli("--repo", cluster, "plan", "--out", plan_file).exit_code == 2
    planned = json.loads(plan_file.read_text())
    assert planned["schema"] == "haios-plan/v1" and planned["desired"]["commit"] == head(cluster)
    # the cluster moves on: node-2 commits by itself
    tx = __import__("haios.node", fromlist=["Node"]).Node(cluster / "nodes/node-2").resume(2, "ANALYZE")
    tx.commit()
    result = cli("--repo", cluster, "reconcile", "--plan", plan_file)
    assert result.exit_code == 1
    assert "refusing a stale plan: the cluster changed since the plan was made (observed hash differs)" in result.stderr
    # a fresh plan; then the desired state changes
    assert cli("--repo", cluster, "plan", "--out", plan_file).exit_code == 2
    thresholds = cluster / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("runtime_mode: NORMAL", "runtime_mode: STRICT"))
    result = cli("--repo", cluster, "reconcile", "--plan", plan_file, "--allow-dirty")
    assert result.exit_code == 1 and "the desired state changed" in result.stderr
    git(cluster, "commit", "-qam", "strict mode")
    assert cli("--repo", cluster, "plan", "--out", plan_file).exit_code == 2
    trace_id = json.loads(plan_file.read_text())["traces"][0]["trace_id"]
    result = cli("--repo", cluster, "reconcile", "--plan", plan_file)
    assert result.exit_code == 0 and f"trace {trace_id}  INTERRUPTED -> CLEAN_EXIT" in result.stdout
    result = cli("--repo", cluster, "reconcile", "--plan", cluster.parent / "missing.json")
    assert result.exit_code == 1 and "not a readable plan" in result.stderr


def test_plan_markdown_for_a_pull_request(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    result = cli("--repo", cluster, "plan", "--format", "markdown")
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines[0] == "### haios plan for `sim` — changes pending"
    assert "| transition | trace | decision | why |" in lines
    assert any(
        line.startswith("| g=2 ANALYZE | `2-analyze-") and "**rollback** (INTERRUPTED)" in line for line in lines
    )
    assert any(
        line.startswith("1. `node-1` **compensate** `key-node-1-0`: fakecloud-vm for fakecloud.vm [clock ")
        for line in lines
    )
    assert "4. `node-3` **rollback**: restore data/ from the BEGIN snapshot, ABORT_PHASE" in lines


def test_plan_and_reconcile_exit_3_on_a_corrupt_wal(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare", settle=False)
    first = next(iter(read_records(cluster / "nodes/node-2/wal")))
    segment = cluster / "nodes/node-2/wal" / first.segment
    data = bytearray(segment.read_bytes())
    data[first.offset + 20] ^= 0x10
    segment.write_bytes(bytes(data))
    result = cli("--repo", cluster, "plan")
    assert result.exit_code == 3 and "needs_human" in result.stdout and "corrupt mid-log" in result.stdout
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3 and "INTERRUPTED -> AWAITING_ACK" in result.stdout
    commit = head(cluster)
    result = cli("--repo", cluster, "reconcile")  # still blocked; nothing new to record
    assert (result.exit_code, head(cluster)) == (3, commit)
    journal = find(cluster, _journal_file(cluster).stem)
    assert journal is not None and journal.alerts[0]["alert"] == "awaiting_ack"


def test_minority_view_changes_nothing(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    for n in ("node-2", "node-3"):
        (cluster / f"nodes/{n}").rename(cluster / f"nodes/{n}.away")
    result = cli("--repo", cluster, "plan")
    assert result.exit_code == 3 and "minority view" in result.stdout
    before = head(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3 and "minority view: 1 of 3 active members reachable; nothing changed" in result.stdout
    assert head(cluster) == before and not (cluster / JOURNAL_DIR).exists()


def test_plan_exit_4_when_another_reconciler_holds_the_shard(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    GitBackend(cluster).acquire("ANALYZE", "elsewhere/1/2/cafe", "their-trace", 600, time.time())
    result = cli("--repo", cluster, "plan")
    assert (
        result.exit_code == 4
        and "lease held by pid 1 on host elsewhere for trace their-trace until 20" in result.stdout
    )
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 4 and "shard ANALYZE is held by pid 1 on host elsewhere" in result.stdout
    assert positions(cluster)["node-2"] == (1, "IDLE")


def test_hold_policy_and_suspend(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    state = cluster / "desired/state.yaml"
    text = state.read_text()
    state.write_text(text.replace("  ANALYZE:\n    on_partial: auto", "  ANALYZE:\n    on_partial: hold"))
    git(cluster, "commit", "-qam", "hold ANALYZE")
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 3 and "on_partial is hold" in result.stdout
    state.write_text(text.replace("suspend: false", "suspend: true"))
    git(cluster, "commit", "-qam", "suspend")
    for path in (cluster / JOURNAL_DIR).glob("*.yaml"):
        path.unlink()
    before = head(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 2 and "suspend: plan only, nothing changed but the policy" in result.stdout
    # nothing moved but the suspension itself, on its way to the nodes
    assert _changed(cluster, before) == ["status/policy.yaml"] and positions(cluster)["node-1"] == (1, "IDLE")


def test_partition_blocks_then_heals_on_the_same_trace(cluster: Path) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    gossip = cluster / "nodes/node-3/gossip"
    now = utc(time.time())  # its agent keeps the file current: a stale one is no verdict
    body = {"node": "node-3", "peers": {}, "partition_status": "PARTITIONED", "since": now, "updated_at": now}
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    result = reconcile(cluster)
    (outcome,) = result.outcomes
    assert (result.exit_code(), outcome.after) == (3, "BLOCKED")
    assert "node-3 PARTITIONED" in outcome.note
    body["partition_status"] = "NORMAL"
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    again = reconcile(cluster)
    assert again.exit_code() == 0
    assert (again.outcomes[0].trace_id, again.outcomes[0].before, again.outcomes[0].after) == (
        outcome.trace_id,
        "BLOCKED",
        "CLEAN_EXIT",
    )


def test_resume_policy_runs_the_hook_then_rolls_forward(cluster: Path) -> None:
    (cluster / "playbooks/resume-analyze.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: resume-analyze\nresumes: ANALYZE\n"
        'run:\n  command: [haios, node, prepare, ".", --g, "{g}", --phase, "{phase}"]\ntimeout: 60s\n'
    )
    state = cluster / "desired/state.yaml"
    state.write_text(
        state.read_text().replace(
            "  ANALYZE:\n    on_partial: auto",
            "  ANALYZE:\n    on_partial: resume\n    resume_playbook: resume-analyze",
        )
    )
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    result = reconcile(cluster)
    assert result.exit_code() == 0, result.to_json()
    assert result.outcomes[0].verdict == "forward"
    assert positions(cluster) == {n: (2, "ANALYZE") for n in ("node-1", "node-2", "node-3")}
    journal = find(cluster, result.outcomes[0].trace_id)
    assert journal is not None and journal.resume_attempts == 1
    assert [(s["node"], s["action"]) for s in journal.steps][0] == ("node-3", "resume")


def test_aborted_phase_side_effects_are_compensated(cluster: Path) -> None:
    from haios.node import Node

    tx = Node(cluster / "nodes/node-1").begin(2, "ANALYZE", participants=["node-1", "node-2", "node-3"])
    tx.side_effect("k-aborted", "fakecloud.vm", {"resource": "vm-a", "cloud": "../../.sim/cloud"}, "fakecloud-vm", {})
    FakeCloud(sim_dir(cluster) / "cloud").create("fakecloud.vm", "vm-a", "k-aborted", "node-1")
    tx.prepare()
    tx.abort("the coordinator aborted")
    result = reconcile(cluster)
    assert result.exit_code() == 0 and result.outcomes[0].verdict == "rollback"
    assert deletes(cluster) == {"k-aborted": 1}
    assert sim_check(cluster) == []
    Node(cluster / "nodes/node-1").begin(2, "ANALYZE", participants=["node-1"]).close()  # no longer owed


def test_audit_lists_traces(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    assert cli("--repo", cluster, "audit").stdout == "no reconcile has changed anything yet\n"
    assert reconcile(cluster).exit_code() == 0
    (entry,) = history(cluster)
    trace_id = entry.traces[0]["trace_id"]
    assert entry.traces == [{"trace_id": trace_id, "result": "CLEAN_EXIT", "fencing_token": 1}]
    result = cli("--repo", cluster, "--output", "json", "audit", "--trace", trace_id)
    data = json.loads(result.stdout)
    assert data["commits"][0]["traces"][0]["trace_id"] == trace_id
    assert data["journal"]["state"] == "CLEAN_EXIT" and data["journal"]["fencing_tokens"] == [1]
    result = cli("--repo", cluster, "audit", "--trace", trace_id)
    assert f"trace {trace_id}: g=2 ANALYZE, CLEAN_EXIT" in result.stdout
    assert "node-2 forward: committed" in result.stdout
    result = cli("--repo", cluster, "audit", "--trace", "nope")
    assert result.exit_code == 1 and "no trace 'nope'" in result.stderr


def test_reconcile_push_to_a_remote(cluster: Path, tmp_path: Path, cli: Invoke) -> None:
    remote = tmp_path / "remote.git"
    subprocs.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocs.run(["git", "remote", "add", "origin", str(remote)], cwd=cluster, check=True)
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    result = cli("--repo", cluster, "reconcile", "--push")
    assert result.exit_code == 0 and "pushed to origin" in result.stdout
    pushed = subprocs.run(["git", "rev-parse", "main"], cwd=remote, capture_output=True, text=True, check=True)
    assert pushed.stdout.strip() == head(cluster)


def test_reconcile_push_without_a_remote_is_a_clear_error(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    result = cli("--repo", cluster, "reconcile", "--push")
    assert result.exit_code == 1 and "no git remote 'origin' to push to" in result.stderr


@pytest.mark.parametrize("dry", [True])
def test_reconcile_dry_run_is_plan(cluster: Path, cli: Invoke, dry: bool) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    plan = build(cluster)[0]
    result = cli("--repo", cluster, "reconcile", "--dry-run")
    assert result.exit_code == plan.exit_code() == 2 and "forward (INTERRUPTED)" in result.stdout
    assert positions(cluster)["node-2"] == (1, "IDLE")


def test_doctor_reports_a_lease_left_by_a_dead_reconciler(cluster: Path, cli: Invoke) -> None:
    import socket

    proc = subprocs.spawn(["true"])
    proc.wait()
    GitBackend(cluster).acquire("ANALYZE", f"{socket.gethostname()}/{proc.pid}/1/dead", "t-dead", 600, time.time())
    result = cli("--repo", cluster, "doctor")
    assert result.exit_code == 2
    assert "WARNING lease_stale ANALYZE: shard ANALYZE is still leased to" in result.stdout
    assert "but its holder's process is gone" in result.stdout
    assert f"fix: haios --repo {cluster} reconcile   # takes the lease over and resumes trace t-dead" in result.stdout
    GitBackend(cluster).release(GitBackend(cluster).acquire("ANALYZE", "me", "t2", 60, time.time()), time.time())
    for n in ("node-1", "node-2", "node-3"):  # the copied cluster's heartbeats may be old by now
        beat(cluster / "nodes" / n, n, time.time())
    result = cli("--repo", cluster, "doctor")
    assert result.exit_code == 0, result.stdout


def test_reconcile_reports_progress_per_node(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    events: list[dict[str, object]] = []
    assert reconcile(cluster, progress=events.append).exit_code() == 0
    assert len(events) == 8  # each step starts and finishes
    finished = [(e["node"], e["action"], e["step"], e["total"]) for e in events if e["finished"]]
    assert finished == [
        ("node-1", "compensate", 1, 4),
        ("node-1", "rollback", 2, 4),
        ("node-2", "rollback", 3, 4),
        ("node-3", "rollback", 4, 4),
    ]


def test_reconcile_progress_bars_on_a_terminal(cluster: Path, cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    import haios.cli.recover

    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    with monkeypatch.context() as m:
        m.setattr(haios.cli.recover, "_stderr_is_a_terminal", lambda: True)
        result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 0
    assert "node-3 rollback" in result.stderr and "1/1" in result.stderr  # one bar per node
