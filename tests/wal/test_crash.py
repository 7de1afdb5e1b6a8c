"""A real writer process killed with SIGKILL at random moments: nothing acknowledged is ever lost."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.zygote import Zygote

from haios.wal import read_records, repair, verify

PROJECT = Path(__file__).parent.parent.parent


@pytest.mark.slow
def test_crash_sigkill_writer_never_loses_acknowledged_records(tmp_path: Path, rate: Callable[[str], None]) -> None:
    trials = int(os.environ.get("HAIOS_CRASH_TRIALS", "200"))
    started = time.monotonic()
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": f"{PROJECT}{os.pathsep}{PROJECT / 'tests'}", "PYTHONDONTWRITEBYTECODE": "1"}
    directory = tmp_path / "wal"
    acknowledged: set[int] = set()
    seen = 0  # records 1..seen were read back, contiguous
    torn = 0
    with Zygote("helpers.wal_writer", env) as writers:
        for trial in range(trials):
            pid, lines = writers.start(str(directory), str(trial), "65536")
            assert lines[0].startswith("ready"), lines
            time.sleep(rng.uniform(0, 0.05))
            os.kill(pid, signal.SIGKILL)
            lines += writers.finish()
            acknowledged.update(int(line) for line in lines[1:])
            report = verify(directory)
            if not report.ok:
                assert report.corruption is not None and report.corruption.torn_tail, report.corruption
                torn += 1
                assert repair(directory).action == "truncated"
            for record in read_records(directory, from_lamport=seen + 1):  # what this writer added
                assert record.lamport == seen + 1, f"trial {trial}: a gap before {record.lamport}"
                seen += 1
            missing = {a for a in acknowledged if a > seen}
            assert not missing, f"trial {trial}: acknowledged records lost: {sorted(missing)[:5]}"
    assert acknowledged, "the writer never acknowledged anything"
    assert [r.lamport for r in read_records(directory)] == list(range(1, seen + 1))  # contiguous, whole
    seconds = time.monotonic() - started
    rate(f"{trials} writers killed in {seconds:.1f} s ({torn} torn tails cut): {trials / seconds:.1f} a second")
