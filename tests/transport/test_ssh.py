"""The SSH transport against a real OpenSSH server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Invoke, subprocs
from helpers.cluster import git, head, plant
from helpers.sshd import Sshd
from helpers.wal import flip

from haios.config import load_repo
from haios.config.model import NodeSpec
from haios.errors import HostKeyError, QuorumError, TransportError, UsageError, WalMissingError
from haios.ops import build, reconcile
from haios.sim.check import sim_check
from haios.sim.simulator import SshLayout, provision_policy, sim_init, sim_run
from haios.transport.ssh import SshTransport, check_node, quote_command


def _layout(sshd: Sshd) -> SshLayout:
    return SshLayout("127.0.0.1", sshd.port, "root", sshd.fingerprint)


@pytest.fixture
def ssh_cluster(tmp_path: Path, ssh_env: Sshd) -> Path:
    """A 3-node simulated cluster at (1, IDLE) that haios reaches through the fixture sshd."""
    directory = sim_init(tmp_path / "cluster", 3, ssh=_layout(ssh_env))
    thresholds = directory / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    ANALYZE: 500ms", "    ANALYZE: 10ms"))
    git(directory, "commit", "-qam", "test set-up: a short ANALYZE prior")
    provision_policy(directory, head(directory))  # the nodes hold what was committed, as after a reconcile
    assert sim_run(directory, iterations=1, seed=7, faults={}).committed == 5
    return directory


def test_ssh_cluster_reconciles_like_a_local_one(ssh_cluster: Path, tmp_path: Path) -> None:
    local = tmp_path / "local-twin"
    shutil.copytree(ssh_cluster, local, symlinks=True)
    config = local / "haios.yaml"
    text = config.read_text()
    for n in ("node-1", "node-2", "node-3"):
        start = text.index(f"  - name: {n}\n")
        end = (
            text.index("\n  - name:", start + 1) if f"node-{int(n[-1]) + 1}" in text else text.index("\ncoordination:")
        )
        text = text[:start] + f"  - name: {n}\n    transport: local\n    root: nodes/{n}" + text[end:]
    config.write_text(text)
    for directory in (ssh_cluster, local):
        plant(directory, node_1="commit", node_2="prepare", node_3="begin", effects={"node-3": 1}, settle=False)
    time.sleep(0.2)
    over_ssh, locally = build(ssh_cluster)[0], build(local)[0]
    assert [(t.g, t.phase, t.verdict, len(t.steps)) for t in over_ssh.traces] == [
        (t.g, t.phase, t.verdict, len(t.steps)) for t in locally.traces
    ]
    assert over_ssh.observed_hash == locally.observed_hash  # the same nodes seen the same way


def test_ssh_faulty_cluster_converges_and_checks_clean(ssh_cluster: Path, cli: Invoke) -> None:
    plant(ssh_cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1, "node-3": 1})
    result = cli("--repo", ssh_cluster, "-o", "json", "reconcile")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(t["verdict"], t["after"]) for t in data["traces"]] == [("rollback", "CLEAN_EXIT")]
    assert sim_check(ssh_cluster) == []
    doctor = cli("--repo", ssh_cluster, "doctor")
    assert doctor.exit_code == 0, doctor.output


def test_pinned_host_key_mismatch_is_refused_with_exit_5(ssh_cluster: Path, cli: Invoke) -> None:
    config = ssh_cluster / "haios.yaml"
    text = config.read_text()
    wrong = "SHA256:" + "A" * 43
    config.write_text(text.replace(_layout_key(text), wrong))
    git(ssh_cluster, "commit", "-qam", "a host key that is not the node's")
    before = (ssh_cluster / "nodes/node-1/state.txt").read_bytes()
    for command in (["doctor"], ["plan"], ["reconcile"], ["status"]):
        result = cli("--repo", ssh_cluster, *command)
        assert result.exit_code == 5 or command == ["status"], (command, result.output)
    assert "presented SHA256:" in cli("--repo", ssh_cluster, "doctor").stdout
    assert "refused, host key not the pinned one: node-1, node-2, node-3" in cli("--repo", ssh_cluster, "plan").stdout
    assert (ssh_cluster / "nodes/node-1/state.txt").read_bytes() == before
    with (
        SshTransport(load_repo(ssh_cluster).cluster.nodes, mirror=ssh_cluster / "m") as t,
        pytest.raises(HostKeyError) as info,
    ):
        t.read_file("node-1", "state.txt")
    assert info.value.exit_code == 5
    assert f"expected {wrong}" in info.value.message and "presented SHA256:" in info.value.message


def _layout_key(text: str) -> str:
    return next(line.split(": ", 1)[1] for line in text.splitlines() if "host_key: SHA256:" in line)


def test_unknown_host_is_refused(ssh_env: Sshd, tmp_path: Path) -> None:
    spec = NodeSpec("n1", "ssh", str(tmp_path), address="127.0.0.1", port=ssh_env.port, user="root")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with SshTransport([spec], known_hosts=empty, mirror=tmp_path / "m") as t, pytest.raises(HostKeyError) as info:
        t.read_file("n1", "state.txt")
    assert "expected none (the host is unknown)" in info.value.message
    known = tmp_path / "known_hosts2"
    known.write_text(ssh_env.known_hosts_line())
    with SshTransport([spec], known_hosts=known, mirror=tmp_path / "m") as t:
        assert t.read_file("n1", "no-such-file") is None  # pinned through known_hosts: connects


def test_auth_failure_is_a_clean_error(ssh_env: Sshd, tmp_path: Path) -> None:
    from helpers.sshd import keygen

    stranger = tmp_path / "stranger"
    keygen(stranger, "nobody")
    spec = NodeSpec("n1", "ssh", str(tmp_path), "127.0.0.1", ssh_env.port, "root", ssh_env.fingerprint)
    with (
        SshTransport([spec], mirror=tmp_path / "m", identity=str(stranger)) as t,
        pytest.raises(TransportError, match="authentication as root at 127.0.0.1:.* failed"),
    ):
        t.read_file("n1", "state.txt")


def test_unreachable_node_is_a_clean_error(tmp_path: Path) -> None:
    from helpers.sshd import free_port

    spec = NodeSpec("n1", "ssh", str(tmp_path), "127.0.0.1", free_port(), "root", "SHA256:" + "A" * 43)
    with (
        SshTransport([spec], mirror=tmp_path / "m", connect_timeout=1) as t,
        pytest.raises(TransportError, match="cannot connect to 127.0.0.1:"),
    ):
        t.read_file("n1", "state.txt")


def test_no_node_reachable_is_no_settled_cluster_and_the_fix_is_about_the_address(tmp_path: Path, cli: Invoke) -> None:
    """A fresh ssh repo whose first node's name does not resolve and whose second refuses the port:
    plan says what it could not see (exit 3), never that every transition is committed, and each
    fix is about the address in haios.yaml, not about the node root."""
    from helpers.sshd import free_port

    repo = tmp_path / "repo"
    assert cli("init", repo, "--nodes", "2", "--transport", "ssh").exit_code == 0
    config = repo / "haios.yaml"
    text = config.read_text().replace("    address: node-1   ", "    address: node-1.invalid   ", 1)
    text = text.replace("    address: node-2   ", "    address: 127.0.0.1   ", 1)
    config.write_text(text.replace("    port: 22\n", f"    port: {free_port()}\n"))
    env = {"HAIOS_SSH_TIMEOUT": "2"}
    plan = cli("--repo", repo, "plan", env=env)
    assert plan.exit_code == 3, plan.output
    assert "every transition is committed" not in plan.stdout
    assert "no active member could be observed (0 of 2): nothing is known of any transition" in plan.stdout
    assert (
        "the address 'node-1.invalid' does not resolve: correct address in nodes[node-1] in haios.yaml" in plan.stdout
    )
    assert "nothing listens on 127.0.0.1:" in plan.stdout and "check address and port in nodes[node-2]" in plan.stdout
    data = json.loads(cli("--repo", repo, "plan", "-o", "json", env=env).stdout)
    assert sorted(data["unreached"]) == ["node-1", "node-2"] and data["reachable"] == []
    doctor = json.loads(cli("--repo", repo, "doctor", "-o", "json", env=env).stdout)
    fixes = {f["nodes"][0]: f["fix"] for f in doctor["findings"] if f["kind"] == "unreachable"}
    assert "does not resolve" in fixes["node-1"] and "nothing listens" in fixes["node-2"]
    assert not any("exists and is readable" in fix for fix in fixes.values())


@pytest.mark.parametrize(
    ("name", "root"),
    [
        ("n1;touch pwned", "/srv/haios"),
        ("n1", "/srv/haios;touch pwned"),
        ("n1", "/srv/$(touch pwned)"),
        ("n1", "/srv/`touch pwned`"),
        ("n1", "/srv/haios\ntouch pwned"),
        ("n1", "/srv/../etc"),
        ("$(id)", "/srv/haios"),
    ],
)
def test_crafted_names_and_roots_are_rejected_before_connecting(name: str, root: str, tmp_path: Path) -> None:
    spec = NodeSpec(name, "ssh", root, "127.0.0.1", 1, "root", "SHA256:" + "A" * 43)
    with pytest.raises(UsageError, match="not allowed"):
        check_node(spec)
    with pytest.raises(UsageError):
        SshTransport([spec], mirror=tmp_path / "m")  # refused before any connection is tried
    assert not (tmp_path / "pwned").exists()


def test_crafted_root_in_haios_yaml_is_a_validation_error(ssh_cluster: Path, cli: Invoke) -> None:
    config = ssh_cluster / "haios.yaml"
    text = config.read_text()
    root = next(line.split(": ", 1)[1] for line in text.splitlines() if line.strip().startswith("root: /"))
    config.write_text(text.replace(root, root + ";touch /tmp/pwned", 1))
    result = cli("--repo", ssh_cluster, "validate")
    assert result.exit_code == 1 and "an ssh node's root may hold only letters" in result.stdout


def test_remote_words_are_quoted() -> None:
    assert quote_command(["haios", "x y", "$(id)", "a;b", "plain/path-1.0"]) == (
        "haios 'x y' '$(id)' 'a;b' plain/path-1.0"
    )


def test_remote_errors_arrive_as_their_own_class(ssh_cluster: Path, ssh_env: Sshd) -> None:
    from haios.errors import FencedError

    config = load_repo(ssh_cluster)
    with SshTransport(config.cluster.nodes, mirror=ssh_cluster / "m") as t:
        info = t.call("node-1", {"op": "inspect", "g": 1, "phase": "IDLE"})
        assert info["status"] == "committed"
        t.call(
            "node-1",
            {"op": "checkpoint", "trace_id": "t", "token": 5, "g": 1, "phase": "IDLE", "step": "x", "outcome": "ok"},
        )
        with pytest.raises(FencedError):
            t.call(
                "node-1",
                {
                    "op": "checkpoint",
                    "trace_id": "t",
                    "token": 4,
                    "g": 1,
                    "phase": "IDLE",
                    "step": "x",
                    "outcome": "ok",
                },
            )
        with pytest.raises(UsageError, match="trace_id"):
            t.call("node-1", {"op": "inspect", "g": 1, "phase": "IDLE", "trace_id": "$(id)"})


def test_remote_quorum_and_wal_missing_errors_keep_their_class_and_exit_code(ssh_cluster: Path) -> None:
    """A node that replicates refuses what its replicas cannot take: the caller gets the node's own
    QuorumError (exit 3), and once its WAL is gone, WalMissingError (exit 3) — not a plain HaiosError."""
    config = load_repo(ssh_cluster)
    root = Path(config.cluster.node("node-1").root)
    gone = {"transport": "local", "root": str(ssh_cluster / "no-such-peer")}
    settings = {"mode": "sync-majority", "replicas": 3, "peers": {"node-2": gone, "node-3": gone}}
    fence = {"trace_id": "t", "g": 1, "phase": "IDLE", "step": "x", "outcome": "ok"}
    with SshTransport(config.cluster.nodes, mirror=ssh_cluster / "m") as t:
        assert t.call("node-1", {"op": "replication", "settings": settings})["mode"] == "sync-majority"
        with pytest.raises(QuorumError) as quorum:
            t.call("node-1", {"op": "checkpoint", "token": 5, **fence})
        assert quorum.value.exit_code == 3 and quorum.value.message.startswith("node-1: ")
        shutil.rmtree(root / "wal")
        with pytest.raises(WalMissingError) as missing:
            t.call("node-1", {"op": "checkpoint", "token": 6, **fence})
        assert missing.value.exit_code == 3 and "haios node rejoin node-1" in missing.value.hint


def test_a_remote_host_key_error_keeps_its_class_and_exit_code(ssh_cluster: Path, tmp_path: Path) -> None:
    """A node whose own SSH hop refuses a host key (a jump, a replica peer) says HostKeyError; it
    reaches the caller as HostKeyError, exit 5, with the node's hint."""
    node = tmp_path / "node-haios"
    node.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && exec {sys.executable} -m haios --version\n'
        f"exec {sys.executable} -c 'import json, sys; from haios.errors import HostKeyError; "
        'print(json.dumps({"error": HostKeyError("peer-9 presented an unpinned host key").to_wire()})); '
        "sys.exit(5)'\n"
    )
    node.chmod(0o755)
    config = load_repo(ssh_cluster)
    transport = SshTransport(config.cluster.nodes, mirror=tmp_path / "m", remote_command=str(node))
    with transport as t, pytest.raises(HostKeyError) as refused:
        t.call("node-1", {"op": "inspect", "g": 1, "phase": "IDLE"})
    assert refused.value.exit_code == 5
    assert refused.value.message == "node-1: peer-9 presented an unpinned host key"
    assert "pin it" in refused.value.hint


def test_a_cold_pass_reads_fetched_nodes_in_processes_and_sees_them_the_same(
    ssh_cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haios.ops import observe as observe_module

    plant(ssh_cluster, node_1="commit", node_2="prepare", node_3="begin", effects={"node-3": 1}, settle=False)
    pools = []
    start_pool = observe_module._process_pool
    monkeypatch.setattr(observe_module, "_process_pool", lambda jobs: pools.append(jobs) or start_pool(jobs))
    seen = {}
    for how, node_bytes in (("threads", 1 << 40), ("processes", 1)):
        shutil.rmtree(ssh_cluster / "status/observed", ignore_errors=True)  # cold: whole WALs fetched and read
        monkeypatch.setattr(observe_module, "REMOTE_NODE_BYTES", node_bytes)
        monkeypatch.setattr(observe_module, "REMOTE_POOL_BYTES", 1)
        plan = build(ssh_cluster)[0]
        seen[how] = (plan.observed_hash, [(t.g, t.phase, t.verdict, len(t.steps)) for t in plan.traces])
    assert seen["processes"] == seen["threads"] and seen["threads"][1]
    assert len(pools) == 1  # the second pass read in worker processes, the first did not


def test_mirror_fetches_only_new_wal_bytes(ssh_cluster: Path) -> None:
    config = load_repo(ssh_cluster)
    with SshTransport(config.cluster.nodes, mirror=ssh_cluster / "m") as t:
        view = t.local_view("node-1")
        first = t.bytes_read
        wal = sorted((ssh_cluster / "nodes/node-1/wal").glob("*.wal"))
        assert [p.read_bytes() for p in sorted((view / "wal").glob("*.wal"))] == [p.read_bytes() for p in wal]
        t.local_view("node-1")
        second = t.bytes_read - first
    wal_bytes = sum(p.stat().st_size for p in wal)
    assert first > wal_bytes and second < 0.05 * wal_bytes + 4096  # control files and a 512-byte probe per segment


def test_a_cold_pass_over_ssh_starts_from_each_nodes_own_wal_summary(ssh_cluster: Path) -> None:
    from haios.ops.doctor import run_doctor

    def verdicts(report: Any) -> Any:
        rows = sorted((r.node, r.health, r.wal, r.records, r.last_lamport) for r in report.nodes)
        return report.healthy, rows, sorted(f.key for f in report.findings)

    now = time.time() + 10
    own = run_doctor(ssh_cluster, now=now)
    mirrored = sorted(p.parent.parent.name for p in (ssh_cluster / "status/observed").rglob("wal/.summary.json"))
    assert own.bytes_read == 0 and mirrored == ["node-1", "node-2", "node-3"]
    shutil.rmtree(ssh_cluster / "status/observed")
    for summary in (ssh_cluster / "nodes").glob("*/wal/.summary.json"):
        summary.unlink()
    full = run_doctor(ssh_cluster, now=now)
    assert full.bytes_read > 0 and verdicts(full) == verdicts(own)


def test_a_remote_summary_that_is_no_regular_file_is_not_fetched(ssh_cluster: Path) -> None:
    from haios.ops.doctor import run_doctor

    summary = ssh_cluster / "nodes/node-1/wal/.summary.json"
    summary.unlink()
    os.mkfifo(summary)  # reading it would wait for a writer that never comes
    report = run_doctor(ssh_cluster, now=time.time() + 10)
    wal = sum(p.stat().st_size - 64 for p in (ssh_cluster / "nodes/node-1/wal").glob("*.wal"))
    assert report.bytes_read == wal and not [f for f in report.findings if f.kind.startswith("wal")]


def test_a_flipped_byte_below_a_remote_nodes_summary_is_found(ssh_cluster: Path) -> None:
    from haios.ops.doctor import run_doctor

    first = sorted((ssh_cluster / "nodes/node-2/wal").glob("*.wal"))[0]
    flip(first, first.stat().st_size // 2, 0x10)
    report = run_doctor(ssh_cluster, now=time.time() + 10)
    assert [f.nodes for f in report.findings if f.kind == "wal_corrupt"] == [("node-2",)]


@pytest.mark.service  # starts an sshd of its own (it kills it)
def test_sshd_killed_mid_reconcile_then_restarted_resumes_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server dies right after the first compensation was recorded on its node: the run stops
    cleanly (exit 1, nothing half-applied), and once sshd is back the next run resumes the same
    trace from its checkpoints, compensating nothing twice."""
    from helpers.cluster import deletes
    from helpers.sshd import make_sshd

    from haios.transport.ssh import SshTransport as Transport

    own = make_sshd(tmp_path / "own-sshd")
    try:
        monkeypatch.setenv("HAIOS_SSH_IDENTITY", str(own.client_key))
        monkeypatch.setenv("HAIOS_REMOTE_COMMAND", own.remote_command)
        cluster = sim_init(tmp_path / "cluster", 3, ssh=_layout(own))
        thresholds = cluster / "policies/thresholds.yaml"
        thresholds.write_text(thresholds.read_text().replace("    ANALYZE: 500ms", "    ANALYZE: 10ms"))
        git(cluster, "commit", "-qam", "test set-up: a short ANALYZE prior")
        assert sim_run(cluster, iterations=1, seed=7, faults={}).committed == 5
        plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 2, "node-2": 1})
        real = Transport.call

        def dying(self: Transport, node: str, request: dict[str, object]) -> dict[str, object]:
            answer = real(self, node, request)
            if request.get("op") == "compensated":
                own.kill_all()  # the server and every session: the next call finds nobody
            return answer

        with monkeypatch.context() as m:
            m.setattr(Transport, "call", dying)
            first = reconcile(cluster)
        (outcome,) = first.outcomes
        assert first.exit_code() == 1 and "node-" in outcome.note
        trace = outcome.trace_id
        assert len(deletes(cluster)) == 1
        own.start()
        second = reconcile(cluster)
        assert second.exit_code() == 0, second.to_json()
        assert second.outcomes[0].trace_id == trace and second.outcomes[0].after == "CLEAN_EXIT"
        assert sorted(deletes(cluster).values()) == [1, 1, 1]
        assert sim_check(cluster) == []
    finally:
        own.stop()


SSH_TRIALS = int(os.environ.get("HAIOS_SSH_TRIALS", "12"))  # 'make soak' runs 50


@pytest.mark.slow
@pytest.mark.timeout(max(900, 60 * SSH_TRIALS))  # 12 trials: about 100 s on a slow 2-core day
def test_ssh_trials_with_every_fault(tmp_path: Path, ssh_env: Sshd, rate: Callable[[str], None]) -> None:
    """The recovery trials with haios reaching every node over SSH: no violation, and every fault
    kind drawn in seed 1000's first 12."""
    from haios.sim.simulator import FAULT_KINDS
    from haios.sim.trials import run_trials

    report = run_trials(tmp_path / "trials", count=SSH_TRIALS, seed=1000, ssh=_layout(ssh_env))
    assert [t.seed for t in report.failing] == [], [t.as_dict() for t in report.failing][:3]
    outcomes = {t.outcome for t in report.trials}
    assert outcomes <= {"converged", "blocked"} and len(report.trials) == SSH_TRIALS
    assert sorted(report.to_json()["faults_drawn"]) == sorted(FAULT_KINDS)
    rate(f"{SSH_TRIALS} trials over SSH in {report.seconds:.0f} s: {report.per_minute:.1f} trials/minute")


def test_acceptance_sim_init_over_ssh_faults_reconcile_check(tmp_path: Path, ssh_env: Sshd, cli: Invoke) -> None:
    directory = tmp_path / "sim"
    init = cli(
        "sim", "init", directory, "--nodes", "3", "--transport", "ssh",
        "--ssh-port", str(ssh_env.port), "--ssh-host-key", ssh_env.fingerprint,
    )  # fmt: skip
    assert init.exit_code == 0, init.output
    assert "transport: ssh" in (directory / "haios.yaml").read_text()
    run = cli("sim", "run", directory, "--iterations", "2", "--seed", "3", "--faults", "kill=1,compfail=0.5")
    assert run.exit_code in (0, 2), run.output
    deadline = time.monotonic() + 60
    while True:  # cron, every half second, until converged (bounded)
        result = cli("--repo", directory, "reconcile")
        if result.exit_code != 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.exit_code == 0, result.output
    check = cli("sim", "check", directory)
    assert check.exit_code == 0, check.output
    missing = cli("sim", "init", tmp_path / "other", "--transport", "ssh", "--ssh-port", str(ssh_env.port))
    assert missing.exit_code == 1 and "needs --ssh-host-key" in missing.output


def test_remote_haios_of_another_version_or_missing_is_a_doctor_finding(
    ssh_cluster: Path, ssh_env: Sshd, cli: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    other = tmp_path / "other-haios"
    other.write_text(
        f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "haios 9.9.0"; exit 0; fi\nexec {sys.executable} -m haios "$@"\n'
    )
    other.chmod(0o755)
    from haios import controlfile

    plant(ssh_cluster, node_1="prepare", node_2="prepare", node_3="begin")
    monkeypatch.setenv("HAIOS_REMOTE_COMMAND", str(other))
    for n in ("node-1", "node-2", "node-3"):  # the nodes' agents run that other version too
        path = ssh_cluster / "nodes" / n / "heartbeat"
        body, version = controlfile.read_mapping(path)
        controlfile.write_mapping(path, {**body, "haios_version": "9.9.0"}, expected_version=version)
    doctor = cli("--repo", ssh_cluster, "-o", "json", "doctor")
    found = [f for f in json.loads(doctor.stdout)["findings"] if f["kind"] == "version"]
    assert doctor.exit_code == 2 and len(found) == 3
    assert "node-1 runs haios 9.9.0, this reconciler 0." in found[0]["summary"]
    result = cli("--repo", ssh_cluster, "reconcile")  # nothing acts on a node of another version
    assert result.exit_code == 3 and "not compatible" in result.stdout
    assert (ssh_cluster / "nodes/node-3/state.txt").exists()
    monkeypatch.setenv("HAIOS_REMOTE_COMMAND", "/nonexistent/haios")
    for n in ("node-1", "node-2", "node-3"):  # no agent has said which haios it runs: ask
        (ssh_cluster / "nodes" / n / "heartbeat").unlink()
    doctor = cli("--repo", ssh_cluster, "-o", "json", "doctor")
    found = [f for f in json.loads(doctor.stdout)["findings"] if f["kind"] == "version"]
    assert len(found) == 3 and "haios is not installed on the node" in found[0]["summary"]


def test_a_slow_starting_remote_haios_is_not_an_unreachable_node(ssh_cluster: Path, tmp_path: Path) -> None:
    """The version probe is a command: a loaded node that takes longer than the connect timeout to
    start an interpreter still answers; one that takes longer than the read timeout is named as such
    (not as 'not installed')."""
    import sys

    config = load_repo(ssh_cluster)
    slow = tmp_path / "slow-haios"
    slow.write_text(f'#!/bin/sh\nsleep "$HAIOS_TEST_DELAY"\nexec {sys.executable} -m haios "$@"\n')
    slow.chmod(0o755)
    with SshTransport(config.cluster.nodes, mirror=tmp_path / "m", connect_timeout=1.0) as t:
        t.remote = ["env", "HAIOS_TEST_DELAY=1.5", str(slow)]  # over the connect timeout, under 3x of it
        assert t.version("node-1").startswith("0.")
        assert t.call("node-1", {"op": "inspect", "g": 1, "phase": "IDLE"})["status"] == "committed"
    with SshTransport(config.cluster.nodes, mirror=tmp_path / "m", connect_timeout=1.0) as t:
        t.remote = ["env", f"HAIOS_TEST_DELAY={t.io_timeout + 1:g}", str(slow)]
        with pytest.raises(TransportError, match="did not answer 'haios --version' within 5 s"):
            t.version("node-2")


def test_init_then_provision_ssh_nodes_then_doctor(tmp_path: Path, ssh_env: Sshd, cli: Invoke) -> None:
    repo = tmp_path / "repo"
    assert cli("init", repo, "--nodes", "2", "--transport", "ssh").exit_code == 0
    config = repo / "haios.yaml"
    text = config.read_text()
    for n in ("node-1", "node-2"):
        text = text.replace(f"    address: {n}   ", "    address: 127.0.0.1   ", 1)
    text = text.replace("    port: 22\n", f"    port: {ssh_env.port}\n").replace(
        "    user: haios\n", "    user: root\n"
    )
    text = text.replace("    # host_key: SHA256:...", f"    host_key: {ssh_env.fingerprint}")
    roots = iter([tmp_path / "srv/node-1", tmp_path / "srv/node-2"])
    lines = [f"    root: {next(roots)}" if line.startswith("    root: ") else line for line in text.splitlines()]
    config.write_text("\n".join(lines) + "\n")
    assert cli("--repo", repo, "validate").exit_code == 0
    first = cli("--repo", repo, "node", "provision")
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["node-1: created", "node-2: created"]
    assert (tmp_path / "srv/node-1/state.txt").exists() and (tmp_path / "srv/node-2/wal").is_dir()
    again = cli("--repo", repo, "node", "provision", "node-2")
    assert again.stdout.splitlines() == ["node-2: already provisioned"]
    doctor = cli("--repo", repo, "-o", "json", "doctor")
    findings = json.loads(doctor.stdout)["findings"]
    kinds = {f["kind"] for f in findings}
    assert not kinds & {"unreachable", "host_key", "version", "control_file"}, kinds  # only heartbeats missing
    # the fix for a remote node's heartbeat is to start its agent there, not a local command
    fixes = [f["fix"] for f in findings if f["kind"].startswith("heartbeat")]
    assert fixes and all(fix.startswith("on node-") and f"haios agent {tmp_path}/srv/node-" in fix for fix in fixes), (
        fixes
    )


def test_disk_full_on_a_node_is_a_clean_error_and_nothing_half_written(
    ssh_cluster: Path, cli: Invoke, tmp_path: Path
) -> None:
    """node-3's root is on a tiny filesystem that fills up: the step there fails with the node's own
    error, the other nodes' work stands, and once space is freed the next run finishes the trace."""

    root = ssh_cluster / "nodes/node-3"
    saved = tmp_path / "node-3-saved"
    shutil.copytree(root, saved, symlinks=True)
    if subprocs.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        subprocs.run(["cp", "-a", f"{saved}/.", str(root)], check=True)
        plant(ssh_cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
        filler = root / "filler"
        subprocs.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until ENOSPC
        result = cli("--repo", ssh_cluster, "-o", "json", "reconcile")
        data = json.loads(result.stdout)
        assert result.exit_code == 1 and "Traceback" not in result.output
        (trace,) = data["traces"]
        assert "node-3" in trace["note"] and "space" in trace["note"].lower(), trace["note"]
        assert trace["after"] == "ROLLBACK"
        filler.unlink()
        again = cli("--repo", ssh_cluster, "-o", "json", "reconcile")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["traces"][0]["trace_id"] == trace["trace_id"]
        assert sim_check(ssh_cluster) == []
    finally:
        subprocs.run(["umount", "-l", str(root)], capture_output=True)


def test_connections_prefer_aes_gcm_and_send_without_delay(ssh_cluster: Path) -> None:
    import socket

    import paramiko

    config = load_repo(ssh_cluster)
    with SshTransport(config.cluster.nodes, mirror=ssh_cluster / "m") as t:
        t.local_view("node-1")
        transport = t._conn("node-1").client.get_transport()
        assert transport.local_cipher == transport.remote_cipher == "aes128-gcm@openssh.com"
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        offered = transport.get_security_options().ciphers
        assert offered[:2] == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
        with socket.socket() as sock:
            assert sorted(offered) == sorted(paramiko.Transport(sock).get_security_options().ciphers)


def test_the_mirror_holds_the_exec_status_files_a_pass_reads_and_no_others(ssh_cluster: Path) -> None:
    from haios import controlfile
    from haios.ops.observe import observe_node

    root = ssh_cluster / "nodes/node-1"
    state, version = controlfile.read_mapping(root / "state.txt")
    g = state["g"]
    done = controlfile.read_mapping(root / f"exec_status_{g}.txt")[0]
    for i in range(g + 1, g + 60):  # the files of a long-lived node: one per iteration, never pruned
        controlfile.write_mapping(root / f"exec_status_{i}.txt", {**done, "g": i}, expected_version=None)
    config = load_repo(ssh_cluster)
    mirror = ssh_cluster / "m"

    def mirrored() -> list[str]:
        return sorted(p.name for p in (mirror / "node-1").glob("exec_status_*"))

    def seen(where: Path) -> dict[int, dict[str, Any]]:
        return observe_node(ssh_cluster, "node-1", where, cache=None)[0].exec_status

    with SshTransport(config.cluster.nodes, mirror=mirror) as t:
        t.local_view("node-1")
        assert mirrored() == sorted([f"exec_status_{g}.txt", f"exec_status_{g + 1}.txt"])
        assert seen(mirror / "node-1") == seen(root) and len(seen(root)) == 2
        moved = {**state, "g": g + 30}  # the node went on: its state.txt names a later iteration
        controlfile.write_mapping(root / "state.txt", moved, expected_version=version)
        t.local_view("node-1")
        assert mirrored() == [f"exec_status_{g + 30}.txt", f"exec_status_{g + 31}.txt"]
        assert seen(mirror / "node-1") == seen(root)
