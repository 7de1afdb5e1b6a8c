"""``haios sim trials``: init → faulty run → reconcile until converged or blocked → check, many times."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Invoke, subprocs

from haios.sim.simulator import FAULT_KINDS
from haios.sim.trials import run_trial

CI_FAULTS = "kill=0.3,torn=0.1,bitflip=0.05,partition=0.1,slowfsync=0.2,compfail=0.2,cost=0.1"


def test_trials_cli_reports_outcomes(cli: Invoke, tmp_path: Path) -> None:
    result = cli("sim", "trials", "--count", "3", "--seed", "40", "--jobs", "1", "--workdir", tmp_path / "w")
    assert result.exit_code == 0, result.stdout
    first, last = result.stdout.splitlines()[0], result.stdout.splitlines()[-1]
    assert first.startswith("3 trials in ") and "trials/minute" in first
    assert result.stdout.splitlines()[1].startswith("faults drawn (trials): ")
    assert last == "no trial violated an invariant"
    assert not list((tmp_path / "w").iterdir())  # passing trials leave nothing behind


def test_trials_one_seed_is_reproducible(tmp_path: Path) -> None:
    a = run_trial(tmp_path / "a", 15, {"kill": 0.5, "compfail": 0.5})  # a compensator fails: 3 runs
    b = run_trial(tmp_path / "b", 15, {"kill": 0.5, "compfail": 0.5})
    assert (a.nodes, a.outcome, a.faults, a.rounds) == (b.nodes, b.outcome, b.faults, b.rounds)
    assert a.ok, a.as_dict()


TRIALS = int(os.environ.get("HAIOS_TRIALS", "30"))  # 'make soak' runs 300
TRIALS_LIMIT = max(900, 12 * TRIALS)  # 30 trials: 1.5 min on a slow 2-core day, 3 on one core


@pytest.mark.slow
@pytest.mark.timeout(TRIALS_LIMIT)
def test_trials_acceptance_seed_1(tmp_path: Path, rate: Callable[[str], None]) -> None:
    """Trials with every fault kind: kill, torn, bitflip, partition, slowfsync, compfail (a
    compensator failing once, three times or forever) and cost (a cost spike past the cap) — each
    drawn in at least one trial of seed 1's first 30."""
    proc = subprocs.run(
        [sys.executable, "-m", "haios", "--output", "json", "sim", "trials", "--count", str(TRIALS), "--seed", "1"]
        + ["--faults", CI_FAULTS, "--workdir", str(tmp_path / "trials")],
        capture_output=True,
        text=True,
        timeout=TRIALS_LIMIT - 60,  # the command's own timeout first: its group is killed, the test says so
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps(report["failing"], indent=1)[:4000]
    assert report["violating_seeds"] == [] and sum(report["outcomes"].values()) == TRIALS
    assert set(report["outcomes"]) == {"converged", "blocked"}  # blocked for an allowed reason
    assert report["outcomes"]["converged"] > TRIALS * 2 // 3
    assert sorted(report["faults_drawn"]) == sorted(FAULT_KINDS)
    rate(f"{TRIALS} trials in {report['seconds']} s: {report['trials_per_minute']} trials/minute")


def _start_trials(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """``haios sim trials`` with two workers, once their simulated nodes run; with the processes below it."""
    trials = subprocs.spawn(
        [sys.executable, "-m", "haios", "sim", "trials", "--count", "40", "--jobs", "2", "--seed", "1"]
        + ["--workdir", str(tmp_path / "w")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120  # interpreter start-up and the first sim init, on a slow machine
    while time.monotonic() < deadline:
        below = subprocs.descendants(trials.pid)
        if sum("haios.sim.worker" in subprocs.cmdline(p) for p in below) >= 3:
            return trials, below
        assert trials.poll() is None, trials.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("no simulated node started within 120 s")


def _all_gone(pids: list[int], limit: float = 30.0) -> list[int]:
    deadline = time.monotonic() + limit
    while True:
        alive = [p for p in pids if subprocs.alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_trials_interrupted_end_their_workers(tmp_path: Path, signum: int) -> None:
    trials, below = _start_trials(tmp_path)
    trials.send_signal(signum)  # to the command alone, not its group: it must end its workers itself
    _, err = trials.communicate(timeout=60)
    assert trials.returncode == 130, err
    assert err.decode().strip().endswith("interrupted")
    assert _all_gone(below) == []


def test_trials_killed_take_their_workers_along(tmp_path: Path) -> None:
    trials, below = _start_trials(tmp_path)
    trials.kill()  # SIGKILL: no handler runs; the workers and their nodes die with their parents
    trials.communicate(timeout=30)
    assert _all_gone(below) == []
