"""Five hosts, each a network namespace with its own address, its own sshd and its own ``haios agent``,
on two switches joined by one cable the test can pull: a real 2|3 split, packets vanishing as when a
switch uplink fails. The agents gossip over SSH (pinned host keys) and decide alone.

SPEC §2.5: within the partition window and a few rounds, the two hosts cut off from the majority mark
themselves PARTITIONED and refuse BEGIN; the three go on; once the cable is back every host is NORMAL
again by itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import subprocs
from helpers.cluster import git, head
from helpers.netns import ip, make_keys, need_namespaces, sim_cluster_at, start_sshd, stop_sshds
from helpers.sshd import host_fingerprint

from haios import controlfile
from haios.errors import PartitionError
from haios.node import Node
from haios.sim.simulator import provision_policy

HOSTS = ("node-1", "node-2", "node-3", "node-4", "node-5")
LEFT, RIGHT = HOSTS[:2], HOSTS[2:]
INTERVAL, WINDOW = 3.0, 15.0


@dataclass
class Lab:
    switch: str  # the namespace of the two switches and the cable between them
    cable: str  # its end on the left switch
    fingerprint: str  # the hosts' sshd key (one key for all five)
    client_key: Path  # the agents' key
    hosts: dict[str, str] = field(default_factory=dict)  # node -> its namespace
    addresses: dict[str, str] = field(default_factory=dict)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agents: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def pull_cable(self) -> None:
        ip("-n", self.switch, "link", "set", self.cable, "down")

    def plug_cable(self) -> None:
        ip("-n", self.switch, "link", "set", self.cable, "up")


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[Lab]:
    need_namespaces()
    tag = uuid.uuid4().hex[:5]
    keys = make_keys(tmp_path / "keys")
    switch = f"hz{tag}s"
    made = [switch]
    lab = Lab(switch, f"hc{tag}a", host_fingerprint(keys / "host.pub"), keys / "client")
    try:
        ip("netns", "add", switch)
        for bridge in ("bra", "brb"):
            ip("-n", switch, "link", "add", bridge, "type", "bridge")
            ip("-n", switch, "link", "set", bridge, "up")
        ip("-n", switch, "link", "add", f"hc{tag}a", "type", "veth", "peer", "name", f"hc{tag}b")
        ip("-n", switch, "link", "set", f"hc{tag}a", "master", "bra", "up")
        ip("-n", switch, "link", "set", f"hc{tag}b", "master", "brb", "up")
        for i, node in enumerate(HOSTS, 1):
            ns = f"hz{tag}{i}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            outer, inner = f"hs{tag}{i}", f"hh{tag}{i}"
            ip("link", "add", outer, "netns", switch, "type", "veth", "peer", "name", inner, "netns", ns)
            ip("-n", switch, "link", "set", outer, "master", "bra" if node in LEFT else "brb", "up")
            ip("-n", ns, "addr", "add", f"10.204.0.{i}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            lab.servers.append(start_sshd(ns, f"10.204.0.{i}", keys, tmp_path, str(i)))
            lab.hosts[node], lab.addresses[node] = ns, f"10.204.0.{i}"
        deadline = time.monotonic() + 30
        for node in HOSTS:  # listening, as seen from another host
            probe = f"exec 3<>/dev/tcp/{lab.addresses[node]}/22"
            while subprocs.run(["ip", "netns", "exec", lab.hosts[HOSTS[-1]], "bash", "-c", probe]).returncode:
                assert time.monotonic() < deadline, f"sshd of {node} did not come up"
                time.sleep(0.05)
        yield lab
    finally:
        for agent in lab.agents.values():
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        stop_sshds(lab.servers)
        # a server whose session ended while it started has no sshd above it any more: it is ours
        for pid in subprocs.descendants(os.getpid()):
            if str(tmp_path) in subprocs.cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in made:  # deleting a namespace removes its veth ends and bridges too
            subprocs.run(["ip", "netns", "del", ns], capture_output=True)


def _cluster(lab: Lab, tmp_path: Path) -> Path:
    """Five node roots whose policy says how to reach each host, with a short interval and window."""
    directory = sim_cluster_at(tmp_path / "cluster", lab.addresses, lab.fingerprint)
    thresholds = directory / "policies/thresholds.yaml"
    text = re.sub(r"(?m)^  interval: 15s", f"  interval: {INTERVAL:g}s", thresholds.read_text())
    thresholds.write_text(re.sub(r"(?m)^  window: 45s", f"  window: {WINDOW:g}s", text))
    git(directory, "commit", "-qam", "lab: the hosts' addresses, a short heartbeat interval and partition window")
    provision_policy(directory, head(directory))
    return directory


def _statuses(cluster: Path) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for node in HOSTS:
        path = cluster / "nodes" / node / "gossip"
        out[node] = controlfile.read_mapping(path)[0].get("partition_status") if path.exists() else None
    return out


def _wait_for(cluster: Path, want: dict[str, str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (seen := _statuses(cluster)) != want:
        assert time.monotonic() < deadline, f"after {seconds:g} s: {seen}, wanted {want}"
        time.sleep(0.2)


def test_split_two_three_and_heal_with_real_agents(netlab: Lab, tmp_path: Path) -> None:
    lab = netlab
    cluster = _cluster(lab, tmp_path)
    env = {
        **os.environ,
        "HAIOS_SSH_IDENTITY": str(lab.client_key),
        "HAIOS_REMOTE_COMMAND": f"{sys.executable} -m haios",
    }
    for node in HOSTS:
        root = cluster / "nodes" / node
        command = ["ip", "netns", "exec", lab.hosts[node], sys.executable, "-m", "haios", "agent", str(root)]
        lab.agents[node] = subprocs.spawn(command, env=env, stderr=subprocess.PIPE, text=True)
    # a few rounds: every member heard by every other, directly or relayed
    _wait_for(cluster, dict.fromkeys(HOSTS, "NORMAL"), 60)
    lab.pull_cable()
    # the window and a few rounds (each bounded by the agent's own timeouts), with a 3x margin
    _wait_for(
        cluster, {**dict.fromkeys(LEFT, "PARTITIONED"), **dict.fromkeys(RIGHT, "NORMAL")}, 3 * (WINDOW + 10 * INTERVAL)
    )
    with pytest.raises(PartitionError):
        Node(cluster / "nodes/node-1").begin(2, "ANALYZE", participants=list(HOSTS))
    for node in RIGHT:  # the majority still hears one another
        heard = controlfile.read_mapping(cluster / "nodes" / node / "gossip")[0]["peers"]
        assert all(heard[other] is not None for other in RIGHT if other != node)
    lab.plug_cable()
    _wait_for(cluster, dict.fromkeys(HOSTS, "NORMAL"), 3 * (WINDOW + 10 * INTERVAL))
    for agent in lab.agents.values():
        agent.send_signal(signal.SIGTERM)
    for node, agent in lab.agents.items():
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, (node, err[-2000:])
        assert "stopped after" in err and "Traceback" not in err
        if node in LEFT:  # each line one event: the partition it saw, and its end
            assert "PARTITIONED" in err and f"{node}: NORMAL" in err
