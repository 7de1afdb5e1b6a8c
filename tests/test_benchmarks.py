"""The benchmark scripts keep working (a smoke run at tiny sizes; timings are not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocs

PROJECT = Path(__file__).parent.parent


def _quick(tmp_path: Path, name: str, *extra: str, timeout: int) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run ``benchmarks/NAME.py --quick`` with its data in a fresh directory."""
    work = tmp_path / "bench"
    work.mkdir()
    argv = [sys.executable, str(PROJECT / f"benchmarks/{name}.py"), "--quick", *extra, "--dir", str(work)]
    return work, subprocs.run(argv, capture_output=True, text=True, timeout=timeout)


def test_benchmarks_wal_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "wal_bench", timeout=300)
    assert proc.returncode in (0, 1), proc.stderr  # 1: a target missed at toy sizes, not a failure here
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["measure", "haios", "baseline", "ratio", "target", "ok"]
    assert any(line.startswith("durable append p50") for line in lines)
    assert any(line.startswith("verify peak RSS") for line in lines)
    assert list(work.iterdir()) == []  # cleaned up


def test_benchmarks_snapshot_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "snapshot_bench", timeout=300)
    assert proc.returncode in (0, 1), proc.stderr  # toy sizes: cp -a may well win, which is not a failure here
    assert proc.stdout.splitlines()[0].startswith("method")
    assert "rsync -a --link-dest" in proc.stdout and "cp -a" in proc.stdout
    assert list(work.iterdir()) == []


def test_benchmarks_reconcile_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "reconcile_bench", "--jobs", "1", timeout=600)
    assert proc.returncode in (0, 1), proc.stderr  # toy sizes: the no-op ratio target may be missed
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["measure", "value", "target", "ok"]
    assert lines[1].startswith("reconcile 1 (12 nodes x 400 records, 3 to roll forward; from the nodes' WAL")
    assert lines[1].endswith("yes")
    assert lines[2].startswith("reconcile 2 (nothing to do)") and lines[2].endswith("yes")
    assert any(line.startswith("sim trials (4, every fault kind)") and " 0 violating;" in line for line in lines)
    assert list(work.iterdir()) == []  # cleaned up


@pytest.mark.service  # the benchmark starts sshd
def test_benchmarks_fanout_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    from helpers.sshd import sshd_binary

    if sshd_binary() is None:
        import pytest

        pytest.skip("OpenSSH sshd is not installed (Debian package openssh-server)")
    work, proc = _quick(tmp_path, "fanout_bench", timeout=600)
    assert proc.returncode in (0, 1), proc.stderr  # toy sizes: the ratio targets may be missed
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["measure", "median", "s"]
    assert lines[1].startswith("haios doctor, warm (6 nodes)")
    assert any(line.startswith("ansible -m stat") for line in lines)
    assert any(line.startswith("plan bytes over SSH, 1st / 2nd") for line in lines)
    assert list(work.iterdir()) == []  # cleaned up


def test_benchmarks_replication_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "replication_bench", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["measure", "median", "ms"]
    assert lines[1].startswith("BEGIN_PHASE record, replication off") and "baseline" in lines[1]
    assert lines[2].startswith("BEGIN_PHASE record, R=3 local")
    assert any(line.startswith("lock acquire+release, git") for line in lines)
    assert list(work.iterdir()) == []  # cleaned up


def test_benchmarks_agent_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "agent_bench", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["measure", "median", "ms"]
    assert any(line.startswith("round, kept-open SSH sessions") for line in lines)
    assert any(line.startswith("round, a session per round") for line in lines)
    assert list(work.iterdir()) == []


def test_benchmarks_run_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "run_bench", "--no-lab", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["measure", "median", "ms"]
    assert any(line.startswith("node run: haios node run -- true") for line in lines)
    assert list(work.iterdir()) == []


def test_benchmarks_startup_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "startup_bench", timeout=300)
    assert proc.returncode in (0, 1), proc.stderr  # 1: a target missed, not a failure here
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["measure", "median"]
    rows = ("python3 -c pass", "haios --version", "haios --help", "haios node step", "haios node intent")
    for row in (*rows, "haios node step, long WAL (2,000 records)"):
        assert any(line.startswith(row) for line in lines), row
    assert list(work.iterdir()) == []


def test_benchmarks_detect_bench_quick_run_prints_its_table(tmp_path: Path) -> None:
    work, proc = _quick(tmp_path, "detect_bench", timeout=600)
    assert proc.returncode in (0, 1), proc.stderr  # toy sizes: targets are not the point here
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["measure", "value"]
    (first,) = [line for line in lines if line.startswith("first pass, one node in one process")]
    assert "records/s; read + crc32" in first and "ratio" in first
    assert any(line.startswith("doctor pass 2") for line in lines)
    (own,) = [line for line in lines if line.startswith("doctor pass 1 from the nodes' own WAL summaries")]
    assert " 0.00 MB read" in own  # every node's summary adopted: no record folded again
    assert any(line.startswith("same node, from its own WAL summary") and "ratio" in line for line in lines)
