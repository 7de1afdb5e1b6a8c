"""`make demo`'s script end to end: a faulty simulated cluster, reconciled, healthy, audited."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from helpers import browse, subprocs

PROJECT = Path(__file__).parent.parent


@pytest.mark.slow
def test_demo_ends_healthy_with_the_recovery_in_the_audit_log(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1"}
    proc = subprocs.run(
        ["bash", str(PROJECT / "examples/demo.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    exits = re.findall(r"^\(exit (\d+)\)$", out, re.MULTILINE)
    # init, run, doctor (findings), plan (pending), reconcile, doctor, check, audit, audit --trace, reconcile, report
    assert exits == ["0", "0", "2", "2", "0", "0", "0", "0", "0", "0", "0"]
    assert "CRITICAL wal_gap node-1 g=2 CONSTRUCT" in out
    assert re.search(r"trace (2-construct-\w+)  INTERRUPTED -> CLEAN_EXIT  \(rolled back, 2 steps, token 1\)", out)
    assert ": healthy (5 nodes)" in out and "every invariant holds" in out
    assert re.search(r"^    2-construct-\w+: CLEAN_EXIT \(token 1\)$", out, re.MULTILINE)
    assert "nothing to do: every transition is committed or rolled back on all its participants" in out
    # no Python reprs reach a person: no dicts, no None, no tuples in what the demo prints
    reprs = [line for line in out.splitlines() if re.search(r"\{'|': |\bNone\b|\('\w+', ", line)]
    assert reprs == [], reprs

    # the acceptance of the metrics and the timeline, on the demo's own cluster
    sim = Path(re.findall(r"^The demo cluster is in (.+)$", out, re.MULTILINE)[-1])
    assert re.search(r"^phase_recoveries_total\{result=\"rollback\"\} [1-9]", out, re.MULTILINE)
    assert re.search(r"^phase_detect_latency_seconds_count\{phase=\"CONSTRUCT\"\} [1-9]", out, re.MULTILINE)
    checked = subprocs.run(
        ["promtool", "check", "metrics"], input=(sim.parent / "haios.prom").read_bytes(), capture_output=True
    )
    assert checked.returncode == 0, checked.stderr
    page = sim.parent / "report.html"
    shown = browse(page, "--dump-dom")
    lanes = re.findall(r'<g class="lane" data-node="([^"]+)"', shown.stdout)
    assert lanes == [f"node-{i}" for i in range(1, 6)]  # every node of the demo
