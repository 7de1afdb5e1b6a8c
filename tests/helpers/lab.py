"""A multi-host lab: N hosts, each a network namespace with its own address, its own sshd and its own
``haios agent``, on two switches joined by one cable; an operator namespace (on the right switch)
from which ``haios run`` and ``haios reconcile`` reach the hosts over SSH with pinned host keys.

Faults are real: SIGKILL every process of a host (and start it again), take a host's link down, pull
the cable (a 2|3 split), SIGKILL ``haios run``. Used by the lab tests, and by ``tests/lab.py`` by hand.
Only the namespaces' own addresses (10.204.0.0/24) are used.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haios import controlfile
from haios.sim.simulator import provision_policy

from . import subprocs
from .cluster import git, head
from .netns import ip, make_keys, sim_cluster_at, start_sshd, stop_sshds
from .sshd import host_fingerprint

HOSTS = ("node-1", "node-2", "node-3", "node-4", "node-5")
LEFT, RIGHT = HOSTS[:2], HOSTS[2:]
OPERATOR = "10.204.0.100"
PROJECT = Path(__file__).resolve().parents[2]

# what every phase's command writes into the stage: a JSON file and a binary one, no newline at the end
PHASE_COMMAND = (
    'printf \'{"node": "%s", "g": %s, "phase": "%s"}\' "$HAIOS_NODE" "$HAIOS_G" "$HAIOS_PHASE" '
    '> "$HAIOS_STAGE/$HAIOS_PHASE.json" && printf "\\000\\377\\001%s" "$HAIOS_G" > "$HAIOS_STAGE/$HAIOS_PHASE.bin"'
)
PHASES = ("ANALYZE", "BLUEPRINT", "CONSTRUCT", "VALIDATE", "IDLE")


def expected_data(node: str, g: int) -> dict[str, bytes]:
    """The bytes ``data/`` of ``node`` holds once iteration ``g`` went through IDLE (g >= 1)."""
    out: dict[str, bytes] = {}
    for phase in PHASES:
        out[f"{phase}.json"] = f'{{"node": "{node}", "g": {g}, "phase": "{phase}"}}'.encode()
        out[f"{phase}.bin"] = b"\x00\xff\x01" + str(g).encode()
    return out


@dataclass
class Lab:
    work: Path
    tag: str
    switch: str  # the namespace of the two switches and the cable between them
    fingerprint: str  # the hosts' sshd key (one key for all)
    client_key: Path  # the agents' and the operator's key
    keys: Path
    operator: str = ""  # the operator's namespace
    hosts: dict[str, str] = field(default_factory=dict)  # node -> its namespace
    addresses: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # node -> its link's end on the switch
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    cluster: Path | None = None

    @property
    def cable(self) -> str:
        return f"hc{self.tag}a"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HAIOS_SSH_IDENTITY": str(self.client_key),
            "HAIOS_REMOTE_COMMAND": f"{sys.executable} -m haios",
            "PYTHONPATH": str(PROJECT),
        }

    # -- links ---------------------------------------------------------------------------------------

    def pull_cable(self) -> None:
        ip("-n", self.switch, "link", "set", self.cable, "down")

    def plug_cable(self) -> None:
        ip("-n", self.switch, "link", "set", self.cable, "up")

    def cut(self, node: str) -> None:
        ip("-n", self.switch, "link", "set", self.links[node], "down")

    def mend(self, node: str) -> None:
        ip("-n", self.switch, "link", "set", self.links[node], "up")

    # -- processes -----------------------------------------------------------------------------------

    def start_host(self, node: str) -> None:
        """The host's sshd, and its agent once there is a cluster."""
        ns, address = self.hosts[node], self.addresses[node]
        self.servers[node] = start_sshd(ns, address, self.keys, self.work, node)
        deadline = time.monotonic() + 30
        probe = f"exec 3<>/dev/tcp/{address}/22"
        while subprocs.run(["ip", "netns", "exec", ns, "bash", "-c", probe]).returncode:
            assert time.monotonic() < deadline, f"sshd of {node} did not come up"
            time.sleep(0.05)
        if self.cluster is not None:
            self.start_agent(node)

    def start_agent(self, node: str) -> None:
        assert self.cluster is not None
        root = self.cluster / "nodes" / node
        command = ["ip", "netns", "exec", self.hosts[node], sys.executable, "-m", "haios", "agent", str(root)]
        with open(self.work / f"agent-{node}.log", "ab") as log:
            self.agents[node] = subprocs.spawn(command, env=self.env, stdout=log, stderr=log)

    def kill_host(self, node: str) -> None:
        """SIGKILL every process of the host: its agent, its sshd and every session under it."""
        for proc in (self.agents.pop(node, None), self.servers.pop(node, None)):
            if proc is None:
                continue
            for pid in [*subprocs.descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(30)

    def haios(self, *args: str) -> list[str]:
        """A haios command run from the operator's namespace on the lab's cluster."""
        assert self.cluster is not None
        return ["ip", "netns", "exec", self.operator, sys.executable, "-m", "haios", "--repo", str(self.cluster), *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocs.run(self.haios(*args), env=self.env, timeout=timeout, capture_output=True, text=True)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocs.spawn(
            self.haios(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def note(self, line: str) -> None:
        """A line in the lab's own log (what a failed test shows)."""
        with open(self.work / "lab.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    # -- what is on the hosts' disks -----------------------------------------------------------------

    def root(self, node: str) -> Path:
        assert self.cluster is not None
        return self.cluster / "nodes" / node

    def position(self, node: str) -> tuple[int, str | None]:
        state, _ = controlfile.read_mapping(self.root(node) / "state.txt")
        return int(state["g"]), state["ph"]

    def positions(self) -> dict[str, tuple[int, str | None]]:
        return {node: self.position(node) for node in self.hosts}

    def statuses(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for node in self.hosts:
            path = self.root(node) / "gossip"
            out[node] = controlfile.read_mapping(path)[0].get("partition_status") if path.exists() else None
        return out

    def wait_for_statuses(self, want: dict[str, str], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (seen := self.statuses()) != want:
            assert time.monotonic() < deadline, f"after {seconds:g} s: {seen}, wanted {want}"
            time.sleep(0.2)


def up(work: Path, hosts: tuple[str, ...] = HOSTS) -> Lab:
    """Make the namespaces, the switches and the links, and start every host's sshd."""
    tag = uuid.uuid4().hex[:5]
    keys = make_keys(work / "keys")
    lab = Lab(work, tag, f"hz{tag}s", host_fingerprint(keys / "host.pub"), keys / "client", keys)
    try:
        ip("netns", "add", lab.switch)
        lab.namespaces.append(lab.switch)
        for bridge in ("bra", "brb"):
            ip("-n", lab.switch, "link", "add", bridge, "type", "bridge")
            ip("-n", lab.switch, "link", "set", bridge, "up")
        ip("-n", lab.switch, "link", "add", f"hc{tag}a", "type", "veth", "peer", "name", f"hc{tag}b")
        ip("-n", lab.switch, "link", "set", f"hc{tag}a", "master", "bra", "up")
        ip("-n", lab.switch, "link", "set", f"hc{tag}b", "master", "brb", "up")
        ends = [
            (node, f"hz{tag}{i}", f"10.204.0.{i}", "bra" if node in LEFT else "brb") for i, node in enumerate(hosts, 1)
        ]
        ends.append(("operator", f"hz{tag}o", OPERATOR, "brb"))
        for i, (node, ns, address, bridge) in enumerate(ends, 1):
            ip("netns", "add", ns)
            lab.namespaces.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            outer, inner = f"hs{tag}{i}", f"hh{tag}{i}"
            ip("link", "add", outer, "netns", lab.switch, "type", "veth", "peer", "name", inner, "netns", ns)
            ip("-n", lab.switch, "link", "set", outer, "master", bridge, "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            if node == "operator":
                lab.operator = ns
                continue
            lab.hosts[node], lab.addresses[node], lab.links[node] = ns, address, outer
            lab.start_host(node)
        return lab
    except BaseException:
        down(lab)
        raise


def down(lab: Lab) -> None:
    """Stop every process of the lab and delete its namespaces (their links and bridges go with them)."""
    for node in list(lab.agents):
        agent = lab.agents.pop(node)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    stop_sshds(list(lab.servers.values()))
    lab.servers.clear()
    # a session whose server was killed under it has no sshd above it any more: it is ours
    for pid in subprocs.descendants(os.getpid()):
        if str(lab.work) in subprocs.cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for ns in lab.namespaces:
        subprocs.run(["ip", "netns", "del", ns], capture_output=True)
    lab.namespaces.clear()


def make_cluster(lab: Lab, directory: Path, *, interval: float = 1.0, window: float = 4.0, **extra: Any) -> Path:
    """The lab's cluster: a node root per host, haios.yaml naming their addresses and pinned key, a
    short heartbeat interval and partition window, every phase running :data:`PHASE_COMMAND`; the
    nodes hold the policy committed. Then every host's agent starts."""
    cluster = sim_cluster_at(directory, lab.addresses, lab.fingerprint)
    thresholds = cluster / "policies/thresholds.yaml"
    text = re.sub(r"(?m)^  interval: 15s", f"  interval: {interval:g}s", thresholds.read_text())
    thresholds.write_text(re.sub(r"(?m)^  window: 45s", f"  window: {window:g}s", text))
    desired = cluster / "desired/state.yaml"
    text = desired.read_text()
    quoted = PHASE_COMMAND.replace("'", "''")
    for phase in PHASES:  # after each phase's on_partial line (and the comment under it, if any)
        text = re.sub(
            rf"(?m)^(  {phase}:\n    on_partial: \w+\n(?:    #.*\n)?)",
            lambda m: m.group(1) + f"    command: [sh, -c, '{quoted}']\n    timeout: 30s\n",
            text,
        )
    desired.write_text(text)
    git(cluster, "commit", "-qam", "lab: the hosts, a short heartbeat interval and window, a command per phase")
    provision_policy(cluster, head(cluster))
    lab.cluster = cluster
    for node in lab.hosts:
        lab.start_agent(node)
    return cluster


FAULTS = ("kill_host", "cut_host", "split", "kill_run")


@dataclass
class Trial:
    fault: str
    target: str
    goal: int
    run_exit: int | None
    rounds: int  # reconcile / run rounds until converged
    seconds: float
    violations: list[str]


def converge(lab: Lab, goal: int, *, rounds: int = 10, seconds: float = 300) -> int:
    """``haios reconcile`` and ``haios run --until-g GOAL`` until reconcile has nothing to do and every
    host stands at (goal, IDLE); returns the rounds it took. Bounded in rounds and in time."""
    deadline = time.monotonic() + seconds
    for done in range(1, rounds + 1):
        assert time.monotonic() < deadline, f"not converged after {seconds:g} s: {lab.positions()}"
        reconciled = lab.run("reconcile", timeout=180)
        lab.note(
            f"converge {done}: reconcile exit {reconciled.returncode}: {reconciled.stdout[-800:]} {reconciled.stderr[-800:]}"
        )
        if reconciled.returncode == 0 and set(lab.positions().values()) == {(goal, "IDLE")}:
            return done
        ran = lab.run("run", "--until-g", str(goal), timeout=180)
        lab.note(f"converge {done}: run exit {ran.returncode}: {ran.stdout[-800:]} {ran.stderr[-1500:]}")
        if ran.returncode not in (0, 3):  # 3: blocked for now (a host still coming back)
            raise AssertionError(f"haios run exited {ran.returncode}: {ran.stdout[-1500:]} {ran.stderr[-1500:]}")
        if ran.returncode == 3:
            time.sleep(1.0)  # let the agents see the hosts that came back
    raise AssertionError(f"not converged after {rounds} rounds: {lab.positions()}")


def trial(lab: Lab, rng: Any, *, iterations: int = 2) -> Trial:
    """``haios run`` for ``iterations`` more iterations with one random fault injected while it runs,
    healed a moment later; then converge and check every invariant from the hosts' disks."""
    from haios.sim.check import sim_check

    started = time.monotonic()
    goal = max(g for g, _ in lab.positions().values()) + iterations
    fault = rng.choice(FAULTS)
    target = rng.choice(sorted(lab.hosts)) if fault in ("kill_host", "cut_host") else ""
    proc = lab.spawn("run", "--until-g", str(goal))
    time.sleep(rng.uniform(0.2, 1.5))  # into the run
    if fault == "kill_host":
        lab.kill_host(target)
        time.sleep(rng.uniform(0.2, 1.0))
        lab.start_host(target)
    elif fault == "cut_host":
        lab.cut(target)
        time.sleep(rng.uniform(0.5, 2.5))
        lab.mend(target)
    elif fault == "split":
        target = "|".join(("+".join(LEFT), "+".join(RIGHT)))
        lab.pull_cable()
        time.sleep(rng.uniform(1.0, 3.0))
        lab.plug_cable()
    else:
        target = "haios run"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"haios run did not end within 240 s after {fault} {target}") from None
    rounds = converge(lab, goal)
    assert lab.cluster is not None
    violations = [str(v) for v in sim_check(lab.cluster)]
    return Trial(fault, target, goal, proc.returncode, rounds, time.monotonic() - started, violations)


# the agents in the tests: a short heartbeat interval and partition window, to see them act quickly
LAB_INTERVAL, LAB_WINDOW = 5.0, 20.0
LAB_SETTLE = 3 * (LAB_WINDOW + 10 * LAB_INTERVAL)  # the window and a few rounds, with a 3x margin


def lab_cluster(lab: Lab, work: Path) -> Path:
    """The lab's cluster in ``work/cluster``, once every member heard every other."""
    cluster = make_cluster(lab, work / "cluster", interval=LAB_INTERVAL, window=LAB_WINDOW)
    lab.wait_for_statuses(dict.fromkeys(HOSTS, "NORMAL"), LAB_SETTLE)
    return cluster
