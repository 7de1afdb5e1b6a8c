"""The multi-host lab (tests/helpers/lab.py): five hosts, each a network namespace with its own
address, sshd and ``haios agent``; ``haios run`` and ``haios reconcile`` from an operator's namespace
over SSH with pinned host keys; faults on real processes and links.

Every lab test is in this one file, so that the suite runs them one after another on one worker: two
labs at once on a 2-core machine starve each other's agents.

The 30 trials, each one random fault on real processes and links while ``haios run`` goes on — a
host's processes SIGKILLed and started again, a host's link down, a 2|3 split, ``haios run``
SIGKILLed — healed, converged with ``haios reconcile`` and ``haios run``, and every invariant checked
from the hosts' disks. More: ``python tests/lab.py trials --count N``.
"""

from __future__ import annotations

import hashlib
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cluster import git
from helpers.lab import HOSTS, LAB_SETTLE, LEFT, RIGHT, Lab, converge, expected_data, lab_cluster, trial

from haios.errors import PartitionError
from haios.node import Node, manifest
from haios.sim.check import sim_check
from haios.wal import RecordType, read_records

SETTLE = LAB_SETTLE


def _wait(what: Callable[[], bool], seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


@pytest.mark.timeout(1200)  # about a minute alone
def test_run_twenty_iterations_on_five_hosts_byte_exact(netlab: Lab, tmp_path: Path) -> None:
    cluster = lab_cluster(netlab, tmp_path)
    ran = netlab.run("run", "--iterations", "20", timeout=900)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "100 transition(s) committed; reached g=20 IDLE" in ran.stdout
    for node in HOSTS:
        data = netlab.root(node) / "data"
        found = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()}
        assert found == {k: hashlib.sha256(v).hexdigest() for k, v in expected_data(node, 20).items()}, node
        assert netlab.position(node) == (20, "IDLE") and manifest.check(netlab.root(node)) == []
    assert sim_check(cluster) == []
    assert netlab.run("reconcile").returncode == 0


@pytest.mark.timeout(1200)  # two to three minutes alone
def test_split_two_three_the_majority_runs_on_and_the_two_catch_up(netlab: Lab, tmp_path: Path) -> None:
    cluster = lab_cluster(netlab, tmp_path)
    proc = netlab.spawn("run", "--iterations", "8")
    _wait(lambda: netlab.position("node-3") >= (1, "ANALYZE"), 120, "haios run did not get going")
    netlab.pull_cable()
    netlab.wait_for_statuses({**dict.fromkeys(LEFT, "PARTITIONED"), **dict.fromkeys(RIGHT, "NORMAL")}, SETTLE)
    with pytest.raises(PartitionError):  # the two refuse BEGIN by themselves
        Node(netlab.root("node-1")).begin(9, "ANALYZE", participants=list(HOSTS))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, out[-2000:] + err[-3000:]  # done, but two members were left behind
    assert "reached g=8 IDLE; left out: node-1: " in out and "; node-2: " in out
    assert {netlab.position(n) for n in RIGHT} == {(8, "IDLE")}  # the three went on
    assert all(netlab.position(n) < (8, "IDLE") for n in LEFT)
    netlab.plug_cable()
    netlab.wait_for_statuses(dict.fromkeys(HOSTS, "NORMAL"), SETTLE)  # healed by themselves
    converge(netlab, 8)  # the two: half-done transitions rolled back, then caught up
    assert set(netlab.positions().values()) == {(8, "IDLE")}
    assert sim_check(cluster) == []
    for node, agent in list(netlab.agents.items()):
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, node
        log = (tmp_path / f"agent-{node}.log").read_text()
        assert "stopped after" in log and "Traceback" not in log
        if node in LEFT:  # one line per event: the partition it saw, and its end
            assert "PARTITIONED" in log and f"{node}: NORMAL" in log


def test_max_g_committed_while_running_stops_every_host(netlab: Lab, tmp_path: Path) -> None:
    cluster = lab_cluster(netlab, tmp_path)
    proc = netlab.spawn("--output", "json", "run", "--iterations", "10")
    _wait(lambda: max(g for g, _ in netlab.positions().values()) >= 1, 120, "haios run did not get going")
    desired = cluster / "desired/state.yaml"
    desired.write_text(desired.read_text().replace("max_g: null", "max_g: 3", 1))
    git(cluster, "commit", "-qam", "freeze at g=3")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and '"stopped": "max_g"' in out, out[-2000:] + err[-2000:]
    assert set(netlab.positions().values()) == {(3, "IDLE")}
    for node in HOSTS:  # no host began g=4
        begun = [r.payload["g"] for r in read_records(netlab.root(node) / "wal") if r.type is RecordType.BEGIN_PHASE]
        assert max(begun) == 3, node
    assert netlab.run("reconcile").returncode == 0  # pushes the freeze to the nodes
    doctor = netlab.run("--output", "json", "doctor")
    assert "policy_stale" not in doctor.stdout, doctor.stdout[-3000:]
    for node in HOSTS:
        assert Node(netlab.root(node)).max_g() == 3


TRIALS = 30


@pytest.mark.timeout(1800)  # about 6 minutes alone; bounded by each trial's own limits
def test_random_faults_leave_no_violation(netlab: Lab, tmp_path: Path, rate: Callable[[str], None]) -> None:
    lab_cluster(netlab, tmp_path)
    rng = random.Random(2211)
    started = time.monotonic()
    seen: list[str] = []
    for _ in range(TRIALS):
        done = trial(netlab, rng, iterations=1)
        seen.append(f"{done.fault} {done.target}: g={done.goal}, run exit {done.run_exit}, {done.rounds} round(s)")
        assert done.violations == [], "\n".join([*seen, *done.violations])
    minutes = (time.monotonic() - started) / 60
    rate(f"{TRIALS} lab trials in {minutes * 60:.0f} s: {TRIALS / minutes:.1f} trials/minute")
