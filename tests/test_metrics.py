"""Prometheus metrics (SPEC §9) after real simulator runs with faults: values, not just presence, and
output that the real promtool accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Invoke, at, promtool, subprocs
from helpers.cluster import began, git, gossip_at, plant
from helpers.sshd import free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from haios import controlfile
from haios.metrics import RUNS_FILE, exposition, register
from haios.ops import build, reconcile
from haios.recovery import Plan
from haios.recovery.journal import JOURNAL_DIR, load


def samples(repo: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the repo's metrics, by (name, sorted labels)."""
    registry = CollectorRegistry(auto_describe=False)
    register(registry, repo, "sim")
    out = {}
    for family in text_string_to_metric_families(exposition(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def check_metrics(text: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocs.run([promtool(), "check", "metrics"], input=text, capture_output=True, check=False)


def test_metrics_after_a_faulty_run_are_the_journals_numbers(faulty: Path) -> None:
    found = samples(faulty)
    journals = [load(p) for p in sorted((faulty / JOURNAL_DIR).glob("*.yaml"))]
    assert journals and all(j.state == "CLEAN_EXIT" for j in journals)
    for result in ("roll_forward", "rollback"):
        decision = "forward" if result == "roll_forward" else "rollback"
        want = sum(1 for j in journals if j.decision == decision)
        assert value(found, "phase_recoveries_total", result=result) == want
    assert sum(value(found, "phase_recoveries_total", result=r) for r in ("roll_forward", "rollback")) >= 1
    for phase in {j.phase for j in journals}:
        mine = [j for j in journals if j.phase == phase]
        latencies = [j.detection["detected_at"] - j.detection["last_activity"] for j in mine if j.detection]
        assert latencies and all(0 < x < 60 for x in latencies)  # detected after the Φ timeout, within a minute
        assert value(found, "phase_detect_latency_seconds_count", phase=phase) == len(latencies)
        assert value(found, "phase_detect_latency_seconds_sum", phase=phase) == pytest.approx(sum(latencies))
        per_step: dict[str, list[float]] = {}
        for j in mine:
            for s in j.steps:
                for step, seconds in (s.get("timings") or {}).items():
                    per_step.setdefault(step, []).append(seconds)
        assert {"checkpoint_flush", "vc_merge"} <= set(per_step)  # every recovery step writes a checkpoint
        for step, seconds in per_step.items():
            labels = {"phase": phase, "step": step}
            assert value(found, "phase_recovery_latency_seconds_count", **labels) == len(seconds)
            assert value(found, "phase_recovery_latency_seconds_sum", **labels) == pytest.approx(sum(seconds))
            inf = value(found, "phase_recovery_latency_seconds_bucket", le="+Inf", **labels)
            assert inf == len(seconds)
    assert value(found, "haios_reconcile_total", result="converged") >= 1
    assert value(found, "haios_reconcile_duration_seconds_count") == sum(
        value(found, "haios_reconcile_total", result=r)
        for r in ("converged", "error", "pending", "blocked", "locked", "refused")
    )
    runs = json.loads((faulty / RUNS_FILE).read_text())
    assert value(found, "haios_last_success_timestamp_seconds") == pytest.approx(runs["last_success"])
    assert began(faulty) < runs["last_success"] <= time.time()  # the fixture's reconcile, however long ago
    assert value(found, "haios_info", cluster="sim", version=__import__("haios").__version__) == 1


def test_textfile_and_openmetrics_pass_promtool(faulty: Path, cli: Invoke, tmp_path: Path) -> None:
    target = tmp_path / "haios.prom"
    result = cli("--repo", faulty, "metrics", "textfile", target)
    assert result.exit_code == 0, result.output
    checked = check_metrics(target.read_bytes())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = cli("--repo", faulty, "metrics", "textfile", "--openmetrics")
    assert result.exit_code == 0 and result.stdout.endswith("# EOF\n")
    assert '# {trace_id="' in result.stdout  # exemplars link a bucket to a trace


@pytest.mark.parametrize("command", ["plan", "reconcile", "doctor"])
def test_metrics_textfile_option(cluster: Path, cli: Invoke, tmp_path: Path, command: str) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    target = tmp_path / "textfile" / "haios.prom"
    target.parent.mkdir()
    result = cli("--repo", cluster, command, "--metrics-textfile", target)
    assert result.exit_code in (0, 2), result.output
    assert check_metrics(target.read_bytes()).returncode == 0
    found = {
        s.name: s.value
        for f in text_string_to_metric_families(target.read_text())
        for s in f.samples
        if s.labels.get("result") in (None, "rollback", "converged")
    }
    if command == "reconcile":  # the file shows the run it follows
        assert found["phase_recoveries_total"] == 1 and found["haios_reconcile_total"] == 1
        assert found["haios_budget_spent"] == 12.0
    else:
        assert found["phase_recoveries_total"] == 0 and "haios_last_success_timestamp_seconds" not in found
    assert [p.name for p in target.parent.iterdir()] == ["haios.prom"]  # no temporary file left behind


def test_partition_duration_and_evictions(cluster: Path) -> None:
    gossip = cluster / "nodes/node-3/gossip"
    body = {"node": "node-3", "peers": {}, "partition_status": "PARTITIONED", "since": "2026-01-01T00:00:00Z"}
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    since = time.time() - 90
    membership = cluster / "status/membership.yaml"
    reconcile(cluster, clock=gossip_at(cluster, since))  # isolated since 90 s ago
    assert "node-3" in membership.read_text()
    body["partition_status"] = "NORMAL"
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))
    reconcile(cluster)
    found = samples(cluster)
    assert value(found, "partition_duration_seconds_count") == 1
    assert value(found, "partition_duration_seconds_sum") == pytest.approx(90, abs=5)
    assert value(found, "partition_duration_seconds_bucket", le="60.0") == 0
    assert value(found, "partition_duration_seconds_bucket", le="120.0") == 1
    text = membership.read_text().replace("minority_evictions_total: 0", "minority_evictions_total: 2")
    membership.write_text(text)
    assert value(samples(cluster), "minority_evictions_total") == 2


def test_a_failed_run_counts_as_an_error(cluster: Path) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    plan, _ = build(cluster)
    stale = Plan.from_json({**plan.to_json(), "observed_hash": "sha256:" + "0" * 64})
    with pytest.raises(Exception, match="stale plan"):
        reconcile(cluster, plan=stale)
    found = samples(cluster)
    assert value(found, "haios_reconcile_total", result="error") == 1
    assert value(found, "haios_reconcile_total", result="converged") == 0
    assert ("haios_last_success_timestamp_seconds", ()) not in found
    assert reconcile(cluster).exit_code() == 0
    found = samples(cluster)
    assert value(found, "haios_reconcile_total", result="converged") == 1
    assert value(found, "haios_reconcile_duration_seconds_count") == 2


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway (Debian's prometheus-pushgateway) on a free loopback port."""
    binary = shutil.which("prometheus-pushgateway")
    assert binary, "prometheus-pushgateway is missing: tests/system-deps.sh installs it"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "pushgateway.log").open("wb")
    proc = subprocs.spawn([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        _wait_ready(f"{url}/-/ready", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc is None or proc.poll() is None, f"the server exited ({proc.returncode})"
        assert time.monotonic() < deadline, f"{url} not ready after {limit} s"
        time.sleep(0.05)


def _get(url: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def test_push_to_a_real_pushgateway_and_delete(faulty: Path, cli: Invoke, pushgateway: str) -> None:
    result = cli("--repo", faulty, "metrics", "push", "--pushgateway", pushgateway, "--instance", "cron-1")
    assert result.exit_code == 0, result.output
    assert f"pushed to {pushgateway}: job haios, cluster sim, instance cron-1" in result.stdout
    _, _, text = _get(f"{pushgateway}/metrics")
    pushed = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "phase_recoveries_total" and s.labels.get("job") == "haios"
    ]
    assert pushed and all(s.labels["cluster"] == "sim" and s.labels["instance"] == "cron-1" for s in pushed)
    assert sum(s.value for s in pushed) == sum(
        value(samples(faulty), "phase_recoveries_total", result=r)
        for r in ("roll_forward", "rollback", "resolved", "hard_failed", "aborted")
    )
    result = cli("--repo", faulty, "metrics", "push", "--pushgateway", pushgateway, "--instance", "cron-1", "--delete")
    assert result.exit_code == 0, result.output
    _, _, text = _get(f"{pushgateway}/metrics")
    assert 'instance="cron-1"' not in text


def test_a_pushgateway_that_is_down(cluster: Path, cli: Invoke) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    result = cli("--repo", cluster, "metrics", "push", "--pushgateway", gone)
    assert result.exit_code == 1 and f"{gone}: could not push the metrics" in result.stderr
    assert "Traceback" not in result.output
    # on reconcile the work is done and recorded: a failed push warns, the exit code stays the run's
    result = cli("--repo", cluster, "reconcile", "--pushgateway", gone)
    assert result.exit_code == 0 and "warning:" in result.stderr


def test_exporter_serves_metrics_and_health(faulty: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocs.spawn(
        [str(Path(sys.executable).parent / "haios"), "--repo", str(faulty), "metrics", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/healthz", proc)
        assert _get(f"{base}/healthz")[::2] == (200, "ok\n")
        status, content_type, text = _get(f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert check_metrics(text.encode()).returncode == 0
        assert "phase_recoveries_total" in text
        status, content_type, text = _get(f"{base}/metrics", "application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text") and '# {trace_id="' in text
        assert _get(f"{base}/nothing")[0] == 404
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"serving http://127.0.0.1:{port}/metrics" in err.decode()


def test_io_bytes_and_overhead_ratio_are_real_byte_counts(faulty: Path) -> None:
    import base64

    from haios.wal import RecordType, read_records

    build(faulty)  # observe once more: the reconcile's own records are in the WALs now
    found = samples(faulty)
    ratios = []
    for node_root in sorted((faulty / "nodes").iterdir()):
        node = node_root.name
        wal_bytes = sum(p.stat().st_size for p in (node_root / "wal").glob("*.wal"))
        assert value(found, "haios_io_bytes_total", node=node, kind="wal") == wal_bytes
        intents: dict[tuple[int, str], int] = {}
        prepared = snapshots = 0
        for r in read_records(node_root / "wal"):
            key = (r.payload["g"], r.payload["phase"])
            if r.type is RecordType.BEGIN_PHASE:
                intents[key] = 0
                snapshots += r.payload["snapshot_bytes"]
            elif r.type is RecordType.INTENT and r.payload["op"] == "write":
                intents[key] += len(base64.b64decode(r.payload["content_b64"]))
            elif r.type is RecordType.PREPARE:
                assert r.payload["data_bytes"] == intents[key]  # what the phase asked to write, byte for byte
                prepared += r.payload["data_bytes"]
        assert prepared > 0 and snapshots > 0
        assert value(found, "haios_io_bytes_total", node=node, kind="data") == prepared
        assert value(found, "haios_io_bytes_total", node=node, kind="snapshot") == snapshots
        ratios.append((wal_bytes + snapshots) / prepared)
    assert value(found, "max_io_overhead_ratio") == pytest.approx(max(ratios))


def test_open_traces_by_state(cluster: Path) -> None:
    (cluster / "playbooks/fakecloud-vm.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: fakecloud-vm\ncompensates: fakecloud.vm\n"
        'run:\n  command: [sh, -c, "exit 3"]\nnon_retryable_exit_codes: [3]\ntimeout: 10s\n'
    )
    git(cluster, "commit", "-qam", "tests: a compensator that can never succeed")
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    now = time.time()
    assert reconcile(cluster, clock=at(now)).exit_code() == 3
    found = samples(cluster)
    assert value(found, "haios_open_traces", state="BLOCKED_COMPENSATOR") == 1
    assert value(found, "haios_open_traces", state="AWAITING_ACK") == 0
    assert value(found, "haios_reconcile_total", result="blocked") == 1
    reconcile(cluster, clock=at(now + 3601))  # HARD_FAILED: no longer open, counted as a result
    found = samples(cluster)
    assert value(found, "haios_open_traces", state="BLOCKED_COMPENSATOR") == 0
    assert value(found, "phase_recoveries_total", result="hard_failed") == 1


def test_replica_bytes_are_reported_beside_the_local_io_overhead(tmp_path: Path) -> None:
    from haios.sim.simulator import sim_init, sim_run

    directory = sim_init(tmp_path / "c", 3, replication=True)
    assert sim_run(directory, iterations=1, seed=2, faults={}).committed == 5
    assert reconcile(directory).exit_code() == 0  # places the streams (status/replication.yaml)
    build(directory)
    found = samples(directory)
    nodes = directory / "nodes"
    ratios = []
    for origin in ("node-1", "node-2", "node-3"):
        wal = value(found, "haios_io_bytes_total", node=origin, kind="wal")
        copies = sum(p.stat().st_size for p in nodes.glob(f"*/replicas/{origin}/*.wal"))
        assert copies == 2 * wal  # R=3: two peers, each a byte-for-byte copy
        assert value(found, "haios_io_bytes_total", node=origin, kind="replica") == copies
        snapshot = value(found, "haios_io_bytes_total", node=origin, kind="snapshot")
        data = value(found, "haios_io_bytes_total", node=origin, kind="data")
        ratios.append(((wal + snapshot) / data, (wal + copies + snapshot) / data))
    # the budget's measure is what a node writes itself; what its peers write for it is said beside it
    assert value(found, "max_io_overhead_ratio") == pytest.approx(max(local for local, _ in ratios))
    assert value(found, "max_io_overhead_ratio_replicated") == pytest.approx(max(total for _, total in ratios))
    assert value(found, "max_io_overhead_ratio_replicated") > value(found, "max_io_overhead_ratio")


def test_init_replicates_from_three_nodes_and_doctor_holds_writes_to_the_budget(tmp_path: Path, cli: Invoke) -> None:
    """``haios init`` with 3 nodes replicates (sync-majority), with 2 it cannot, and says so; doctor
    reports a node whose local writes per data byte pass io.max_overhead_ratio, the replicas beside."""
    assert cli("init", tmp_path / "two", "--nodes", "2").exit_code == 0
    assert "mode: 'off'" in (tmp_path / "two/haios.yaml").read_text()
    assert cli("init", tmp_path / "optout", "--replication", "off").exit_code == 0
    assert "mode: 'off'" in (tmp_path / "optout/haios.yaml").read_text()
    assert cli("sim", "init", tmp_path / "sim", "--nodes", "3").exit_code == 0  # rehearsals stay fast
    assert "mode: 'off'" in (tmp_path / "sim/haios.yaml").read_text()
    made = cli("init", tmp_path / "repo")
    assert made.exit_code == 0 and "replication sync-majority" in made.stdout
    repo = tmp_path / "repo"
    assert "mode: sync-majority" in (repo / "haios.yaml").read_text()
    assert cli("--repo", repo, "reconcile").exit_code == 0  # places each WAL's replica streams
    ran = cli(
        "node", "run", repo / "nodes/node-1", "--g", "1", "--phase", "ANALYZE", "--commit", "--",
        "sh", "-c", 'head -c 2097152 /dev/urandom > "$HAIOS_STAGE/big.bin"',  # what lz4 cannot shrink
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert list((repo / "nodes/node-2/replicas/node-1").glob("*.wal"))  # a peer holds node-1's WAL
    doctor = json.loads(cli("--repo", repo, "-o", "json", "doctor").stdout)
    assert [f for f in doctor["findings"] if f["kind"] == "io_overhead"] == []  # about 1.34x (base64): within 2.2

    thresholds = repo / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("max_overhead_ratio: 2.2", "max_overhead_ratio: 1.2"))
    git(repo, "commit", "-qam", "tests: a tight write budget")
    doctor = json.loads(cli("--repo", repo, "-o", "json", "doctor").stdout)
    (over,) = [f for f in doctor["findings"] if f["kind"] == "io_overhead"]
    evidence = over["evidence"]
    assert over["nodes"] == ["node-1"] and evidence["budget"] == 1.2 and 1.3 < evidence["ratio"] < 1.5
    assert evidence["replicated_ratio"] > evidence["ratio"] + 2  # two copies of a WAL as big as the data
    assert "over the budget of 1.2x; with its WAL's copies on its peers" in over["summary"]
    found = samples(repo)
    assert value(found, "max_io_overhead_ratio") == pytest.approx(evidence["ratio"], rel=1e-3)
