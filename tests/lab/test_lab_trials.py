"""30 lab trials (tests/helpers/lab.py), each one random fault on real processes and links while
``haios run`` goes on — a host's processes SIGKILLed and started again, a host's link down, a 2|3
split, ``haios run`` SIGKILLed — healed, converged with ``haios reconcile`` and ``haios run``, and every
invariant checked from the hosts' disks. More: ``python tests/lab.py trials --count N``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.lab import Lab, lab_cluster, trial

TRIALS = 30


@pytest.mark.timeout(1800)  # about 8 minutes alone; bounded by each trial's own limits
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
