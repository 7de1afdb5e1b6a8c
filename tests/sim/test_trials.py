"""``haios sim trials``: init → faulty run → reconcile until converged or blocked → check, many times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Invoke

from haios.sim.trials import run_trial

CI_FAULTS = "kill=0.3,torn=0.1,bitflip=0.05,partition=0.1,slowfsync=0.2,compfail=0.2,cost=0.1"


def test_trials_cli_reports_outcomes(cli: Invoke, tmp_path: Path) -> None:
    result = cli("sim", "trials", "--count", "3", "--seed", "40", "--jobs", "1", "--workdir", tmp_path / "w")
    assert result.exit_code == 0, result.stdout
    first, last = result.stdout.splitlines()[0], result.stdout.splitlines()[-1]
    assert first.startswith("3 trials in ") and "trials/minute" in first
    assert last == "no trial violated an invariant"
    assert not list((tmp_path / "w").iterdir())  # passing trials leave nothing behind


def test_trials_one_seed_is_reproducible(tmp_path: Path) -> None:
    a = run_trial(tmp_path / "a", 12, {"kill": 0.5, "compfail": 0.5})
    b = run_trial(tmp_path / "b", 12, {"kill": 0.5, "compfail": 0.5})
    assert (a.nodes, a.outcome, a.faults, a.rounds) == (b.nodes, b.outcome, b.faults, b.rounds)
    assert a.ok, a.as_dict()


@pytest.mark.slow
def test_trials_acceptance_300_seed_1(tmp_path: Path) -> None:
    """300 trials with every fault kind: kill, torn, bitflip, partition, slowfsync, compfail (a
    compensator failing once, three times or forever) and cost (a cost spike past the cap)."""
    proc = subprocess.run(
        [sys.executable, "-m", "haios", "--output", "json", "sim", "trials", "--count", "300", "--seed", "1"]
        + ["--faults", CI_FAULTS, "--workdir", str(tmp_path / "trials")],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps(report["failing"], indent=1)[:4000]
    assert report["violating_seeds"] == [] and sum(report["outcomes"].values()) == 300
    assert set(report["outcomes"]) <= {"converged", "blocked"}
    assert report["outcomes"]["converged"] > 200  # blocked ones are blocked for an allowed reason
