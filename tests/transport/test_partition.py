"""A real network partition: each node's sshd in its own network namespace, the reconciler in
another, joined by veth pairs the test creates (and removes). Cutting a link cuts a node off exactly
as a switch failure would: packets vanish, connections hang, nothing is refused politely.

SPEC §4.7: with the minority cut off, the majority's transitions are still recovered as far as they
can be without it (the trace is BLOCKED, never FAILED, and finishes once the link is back), nothing is
written on the cut-off node, and a reconciler that can reach only a minority changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import subprocs
from helpers.cluster import deletes, git, head, plant
from helpers.netns import ip, make_keys, need_namespaces, sim_cluster_at, start_sshd, stop_sshds
from helpers.sshd import host_fingerprint

from haios.sim.check import sim_check
from haios.sim.simulator import provision_policy, sim_run

NODES = ("node-1", "node-2", "node-3")


@dataclass
class Net:
    tag: str
    reconciler: str  # the reconciler's namespace
    namespaces: dict[str, str]  # node -> its namespace
    addresses: dict[str, str]  # node -> its sshd's address
    links: dict[str, str]  # node -> the reconciler-side interface towards it
    servers: list[subprocess.Popen[bytes]]
    client_key: Path
    fingerprint: str

    def cut(self, *nodes: str) -> None:
        for n in nodes:
            ip("-n", self.reconciler, "link", "set", self.links[n], "down")

    def heal(self, *nodes: str) -> None:
        for n in nodes:
            ip("-n", self.reconciler, "link", "set", self.links[n], "up")

    def haios(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """haios run as the reconciler, inside its namespace."""
        environment = {
            **os.environ,
            "HAIOS_SSH_IDENTITY": str(self.client_key),
            "HAIOS_REMOTE_COMMAND": f"{sys.executable} -m haios",
            "HAIOS_SSH_TIMEOUT": "2",
            **(env or {}),
        }
        command = ["ip", "netns", "exec", self.reconciler, sys.executable, "-m", "haios", *args]
        return subprocs.spawn(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    need_namespaces()
    tag = uuid.uuid4().hex[:5]
    keys = make_keys(tmp_path / "keys")
    reconciler = f"hz{tag}r"
    made = [reconciler]
    servers: list[subprocess.Popen[bytes]] = []
    net = Net(tag, reconciler, {}, {}, {}, servers, keys / "client", host_fingerprint(keys / "host.pub"))
    try:
        ip("netns", "add", reconciler)
        ip("-n", reconciler, "link", "set", "lo", "up")
        for i, node in enumerate(NODES, 1):
            ns = f"hz{tag}{i}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            outer, inner = f"hr{tag}{i}", f"hn{tag}{i}"
            ip("link", "add", outer, "netns", reconciler, "type", "veth", "peer", "name", inner, "netns", ns)
            ip("-n", reconciler, "addr", "add", f"10.203.{i}.1/30", "dev", outer)
            ip("-n", ns, "addr", "add", f"10.203.{i}.2/30", "dev", inner)
            ip("-n", reconciler, "link", "set", outer, "up")
            ip("-n", ns, "link", "set", inner, "up")
            servers.append(start_sshd(ns, f"10.203.{i}.2", keys, tmp_path, str(i)))
            net.namespaces[node], net.addresses[node], net.links[node] = ns, f"10.203.{i}.2", outer
        deadline = time.monotonic() + 10
        for node in NODES:  # listening, as seen from the reconciler's namespace
            while subprocs.run(
                ["ip", "netns", "exec", reconciler, "bash", "-c", f"exec 3<>/dev/tcp/{net.addresses[node]}/22"],
                capture_output=True,
            ).returncode:
                assert time.monotonic() < deadline, f"sshd of {node} did not come up"
                time.sleep(0.05)
        yield net
    finally:
        stop_sshds(servers)
        for ns in made:  # deleting a namespace removes its veth ends too
            subprocs.run(["ip", "netns", "pids", ns], capture_output=True)
            subprocs.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def cluster_behind(net: Net, tmp_path: Path) -> Path:
    directory = sim_cluster_at(tmp_path / "cluster", net.addresses, net.fingerprint)
    thresholds = directory / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    ANALYZE: 500ms", "    ANALYZE: 10ms"))
    assert sim_run(directory, iterations=1, seed=7, faults={}).committed == 5
    slow = directory / "playbooks/fakecloud-vm.yaml"  # a compensator slow enough to cut a link during it
    slow.write_text(  # (the nodes' haios is this interpreter's, whatever the server's PATH says)
        slow.read_text().replace(
            "  command: [haios,",
            f'  command: [sh, -c, \'touch compensating; sleep 2; exec "$0" "$@"\', {sys.executable}, -m, haios,',
        )
    )
    git(directory, "commit", "-qam", "test set-up: addresses, a short ANALYZE prior, a slow compensator")
    provision_policy(directory, head(directory))  # the nodes hold what was committed, as after a reconcile
    return directory


def _fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _result(proc: subprocess.Popen[str]) -> tuple[int, dict[str, object]]:
    out, err = proc.communicate(timeout=180)
    try:
        return proc.returncode, json.loads(out)
    except ValueError:
        raise AssertionError(f"exit {proc.returncode}: {out[-1500:]} {err[-1500:]}") from None


def test_minority_cut_mid_reconcile_then_healed(net: Net, cluster_behind: Path) -> None:
    cluster = cluster_behind
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    minority = cluster / "nodes/node-3"
    run = net.haios("--repo", str(cluster), "-o", "json", "reconcile")
    deadline = time.monotonic() + 60
    while not (cluster / "nodes/node-1/compensating").exists():  # the slow compensation has begun
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    net.cut("node-3")
    before = _fingerprint(minority)
    code, first = _result(run)
    assert code == 1, first["traces"]  # the step on node-3 could not run: an error for this run, nothing lost
    (trace,) = first["traces"]  # type: ignore[misc]
    assert trace["after"] == "ROLLBACK" and "node-3" in trace["note"]
    assert deletes(cluster) == {"key-node-1-0": 1}  # the majority's part was done

    # cut off still: BLOCKED (never FAILED), and nothing is written on the minority
    code, blocked = _result(net.haios("--repo", str(cluster), "-o", "json", "reconcile"))
    assert code == 3 and blocked["traces"][0]["after"] == "BLOCKED"  # type: ignore[index]
    assert "node-3 unreachable" in blocked["traces"][0]["note"]  # type: ignore[index]
    assert _fingerprint(minority) == before

    net.heal("node-3")
    code, healed = _result(net.haios("--repo", str(cluster), "-o", "json", "reconcile"))
    assert code == 0, healed["traces"]
    assert healed["traces"][0]["trace_id"] == trace["trace_id"]  # type: ignore[index]
    assert healed["traces"][0]["after"] == "CLEAN_EXIT"  # type: ignore[index]
    assert deletes(cluster) == {"key-node-1-0": 1}  # compensated once, across the partition
    assert sim_check(cluster) == []


def test_reconciler_cut_off_from_the_majority_changes_nothing(net: Net, cluster_behind: Path) -> None:
    cluster = cluster_behind
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    net.cut("node-1", "node-2")
    before = {n: _fingerprint(cluster / "nodes" / n) for n in NODES}
    head = subprocs.run(["git", "rev-parse", "HEAD"], cwd=cluster, capture_output=True, text=True).stdout
    code, result = _result(net.haios("--repo", str(cluster), "-o", "json", "reconcile"))
    assert code == 3 and result["minority"] is True and "minority view" in str(result["note"])
    assert {n: _fingerprint(cluster / "nodes" / n) for n in NODES} == before
    assert subprocs.run(["git", "rev-parse", "HEAD"], cwd=cluster, capture_output=True, text=True).stdout == head
    net.heal("node-1", "node-2")
    code, result = _result(net.haios("--repo", str(cluster), "-o", "json", "reconcile"))
    assert code == 0 and result["traces"][0]["verdict"] == "rollback"  # type: ignore[index]


def test_link_cut_while_a_compensator_runs_on_that_node(net: Net, cluster_behind: Path) -> None:
    """The connection drops mid-command: the reconciler notices within seconds (TCP keepalive),
    records no success it never heard of, and the next run calls the compensator again with the same
    idempotency key — which the cloud answers from its record: one deletion in all."""
    cluster = cluster_behind
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-3": 1})
    run = net.haios("--repo", str(cluster), "-o", "json", "reconcile")
    deadline = time.monotonic() + 60
    while not (cluster / "nodes/node-3/compensating").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    net.cut("node-3")
    started = time.monotonic()
    code, first = _result(run)
    assert code == 1 and time.monotonic() - started < 30, first  # not the playbook's 60-s timeout
    assert "node-3" in first["traces"][0]["note"]  # type: ignore[index]
    net.heal("node-3")
    code, second = _result(net.haios("--repo", str(cluster), "-o", "json", "reconcile"))
    assert code == 0, second
    assert deletes(cluster) == {"key-node-3-0": 1}
    assert sim_check(cluster) == []
