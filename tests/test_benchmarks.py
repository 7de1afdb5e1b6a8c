"""The benchmark scripts keep working (a smoke run at tiny sizes; timings are not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parent.parent


def test_benchmarks_wal_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "benchmarks/wal_bench.py"), "--quick", "--dir", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: a target missed at toy sizes, not a failure here
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["measure", "haios", "baseline", "ratio", "target", "ok"]
    assert any(line.startswith("durable append p50") for line in lines)
    assert any(line.startswith("verify peak RSS") for line in lines)
    assert list(work.iterdir()) == []  # cleaned up


def test_benchmarks_snapshot_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "benchmarks/snapshot_bench.py"), "--quick", "--dir", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr  # toy sizes: cp -a may well win, which is not a failure here
    assert proc.stdout.splitlines()[0].startswith("method")
    assert "rsync -a --link-dest" in proc.stdout and "cp -a" in proc.stdout
    assert list(work.iterdir()) == []


def test_benchmarks_reconcile_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "benchmarks/reconcile_bench.py"), "--quick", "--jobs", "1", "--dir", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr  # toy sizes: the no-op ratio target may be missed
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["measure", "value", "target", "ok"]
    assert lines[1].startswith("reconcile 1 (12 nodes x 400 records, 3 to roll forward)") and lines[1].endswith("yes")
    assert lines[2].startswith("reconcile 2 (nothing to do)") and lines[2].endswith("yes")
    assert any(line.startswith("sim trials (4, every fault kind)") and " 0 violating;" in line for line in lines)
    assert list(work.iterdir()) == []  # cleaned up
