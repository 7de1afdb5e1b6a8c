"""What the benchmark scripts share: running a measured child process, printing the result table."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PEAK_RSS = """
def peak_rss_kib():
    # this process's peak resident set: VmHWM, not getrusage's ru_maxrss, which Linux carries over
    # exec from the parent at the fork that started this process (a benchmark that built its data
    # in memory would be charged for it)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""
"""Prepended to a measured child's script: ``peak_rss_kib()``, its own peak RSS in KiB."""


def run_child(script: str, repo: Path) -> dict[str, Any]:
    """Run ``python -c SCRIPT REPO`` after a ``sync`` (no writeback of the setup pending); its last
    stdout line is a JSON object of measurements."""
    subprocess.run(["sync"], check=True)
    out = subprocess.run([sys.executable, "-c", script, str(repo)], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells, each column left-aligned to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def latency_row(name: str, values: list[float], base: list[float] | None, digits: int = 2) -> list[str]:
    """Median and p95 in milliseconds, how many, and the median's ratio to ``base``'s (none: this is
    the baseline)."""
    median = statistics.median(values)
    ratio = f"{median / statistics.median(base):.{digits}f}x" if base else "1.00x (baseline)"
    return [name, f"{median * 1000:.2f}", f"{p95(values) * 1000:.2f}", str(len(values)), ratio]


@contextmanager
def loopback_sshd(work: Path) -> Iterator[Any]:
    """An OpenSSH server on loopback (the tests' fixture) and the client environment haios reaches it
    with; yields the ``SshLayout`` of a simulated cluster behind it. Stopped, and the environment put
    back, on the way out."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers.sshd import make_sshd

    from haios.sim.simulator import SshLayout

    sshd = make_sshd(work / "sshd")
    saved = {k: os.environ.get(k) for k in ("HAIOS_SSH_IDENTITY", "HAIOS_REMOTE_COMMAND")}
    try:
        os.environ["HAIOS_SSH_IDENTITY"] = str(sshd.client_key)
        os.environ["HAIOS_REMOTE_COMMAND"] = sshd.remote_command
        yield SshLayout("127.0.0.1", sshd.port, "root", sshd.fingerprint)
    finally:
        sshd.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
