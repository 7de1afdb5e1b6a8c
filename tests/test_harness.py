"""The harness itself: writes outside the test's tmp dir are caught, and no process outlives its test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import subprocs


def test_harness_write_outside_tmp_is_refused(tmp_path: Path, outside_writes: list[str]) -> None:
    outside = Path("/") / f"haios-harness-{os.getpid()}"
    with pytest.raises(PermissionError, match="outside its tmp dir"):
        open(outside, "w").close()  # noqa: SIM115
    assert outside_writes == [f"open '{outside}'"]
    outside_writes.clear()  # the refusal was the point of this test


def test_harness_write_inside_tmp_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine")
    assert (tmp_path / "ok.txt").read_text() == "fine"


def test_harness_home_points_into_tmp(tmp_path: Path) -> None:
    assert os.path.expanduser("~").startswith(str(tmp_path))


def test_harness_a_timed_out_command_takes_its_whole_group_along(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocs.run(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"], timeout=2)
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 10
    while subprocs.alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not subprocs.alive(grandchild), "the command's own child outlived the timeout"


def test_harness_finds_and_kills_what_a_test_left_running() -> None:
    before = set(subprocs.descendants(os.getpid()))
    stray = subprocess.Popen(["sleep", "300"])  # started around the harness on purpose
    try:
        left = subprocs.leftovers(before, settle=0.2)
        assert left == [f"{stray.pid} sleep 300"]
        assert stray.wait(timeout=10) == -signal.SIGKILL
    finally:
        stray.kill()
        stray.wait()


def test_harness_orphans_stay_below_the_test_process(tmp_path: Path) -> None:
    """A killed command's children are re-parented to the test process (a subreaper), not to init."""
    marker = tmp_path / "orphan.pid"
    proc = subprocs.spawn(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"])
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    orphan = int(marker.read_text())
    proc.kill()  # the shell alone: its sleep is orphaned
    proc.wait()
    assert orphan in subprocs.descendants(os.getpid())
    # the harness kills it when the test ends (its process group is registered)


def test_harness_tests_start_processes_only_through_subprocs() -> None:
    """subprocess.run/Popen called directly would escape the process-group bookkeeping."""
    tests = Path(__file__).parent
    allowed = {tests / "helpers/subprocs.py", Path(__file__)}
    direct = re.compile(r"\bsubprocess\.(run|Popen|call|check_call|check_output)\(")
    offenders = [
        f"{path.relative_to(tests)}:{n}"
        for path in sorted(tests.rglob("*.py"))
        if path not in allowed
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line)
    ]
    assert offenders == [], "start subprocesses with helpers.subprocs.run/spawn"


# Files whose tests use the session's shared fixtures (a cluster, a faulty cluster, a repo) and
# time: one of each kind of fixture and of clock (the wall clock, a run's injected clock, doctor's
# memory of earlier passes, an override's expiry). The shift reaches this process alone: a file whose
# tests mix it with the clock of simulator worker processes or other subprocesses (test_eviction's
# rejoin and sim run, the etcd holder) would fail for that mix, not for the fixtures' age, and is left
# out. test_reconcile and test_sel, which read the same fixtures the same ways, are left to the full
# run ('make soak' ages them too).
AGED = [
    "tests/test_alerts.py",
    "tests/test_metrics.py",
    "tests/test_timeline.py",
    "tests/detect/test_doctor.py",
    "tests/overrides/test_verify.py",
]
SOAK_AGED = ["tests/recovery/test_reconcile.py", "tests/recovery/test_sel.py"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 3 minutes on a slow day
def test_harness_an_hour_older_session_changes_nothing(tmp_path: Path, rate: Callable[[str], None]) -> None:
    """The tests that read timestamps from the session's shared fixtures pass just the same when an
    hour has passed since those were built (--clock-shift), as on a slow machine late in a long run."""
    started = time.monotonic()
    aged = AGED + (SOAK_AGED if os.environ.get("HAIOS_SOAK") else [])
    proc = _inner_pytest(tmp_path, ["--clock-shift", "3600", *aged], timeout=800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rate(f"{len(aged)} files an hour older in {time.monotonic() - started:.0f} s")


def test_harness_every_test_that_starts_a_service_is_marked(tmp_path: Path) -> None:
    """``-m service`` selects the tests that start sshd, etcd, a Pushgateway or a namespace with
    sshd, and ``-m 'not service'`` the rest: CI can run them apart, a machine without them skip them."""
    targets = ["tests/transport", "tests/lab", "tests/coord", "tests/test_metrics.py"]
    proc = _inner_pytest(tmp_path, ["--collect-only", "-m", "service", *targets], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    ids = {line.strip() for line in proc.stdout.splitlines() if "::" in line}
    chosen = {i.split("[")[0] for i in ids}
    for test in (
        "tests/transport/test_ssh.py::test_ssh_cluster_reconciles_like_a_local_one",
        "tests/transport/test_ssh.py::test_sshd_killed_mid_reconcile_then_restarted_resumes_the_trace",
        "tests/transport/test_partition.py::test_minority_cut_mid_reconcile_then_healed",
        "tests/lab/test_lab.py::test_split_two_three_the_majority_runs_on_and_the_two_catch_up",
        "tests/transport/test_agent_ssh.py::test_the_agent_gossips_over_kept_open_ssh_sessions",
        "tests/transport/test_replication_ssh.py::test_ssh_peers_down_refuse_durable_appends",
        "tests/coord/test_etcd_backend.py::test_tokens_of_every_shard_come_from_one_counter",
        "tests/test_metrics.py::test_push_to_a_real_pushgateway_and_delete",
    ):
        assert test in chosen, test
    # the contract suite: its etcd runs start etcd, its git and memory runs start nothing
    race = "tests/coord/test_contract.py::test_exactly_one_of_eight_racing_reconcilers_wins"
    assert f"{race}[etcd]" in ids and f"{race}[git]" not in ids and f"{race}[memory]" not in ids
    for test in (
        "tests/transport/test_ssh.py::test_remote_words_are_quoted",
        "tests/coord/test_git_backend.py::test_git_lease_tokens_strictly_increase",
        "tests/test_metrics.py::test_a_pushgateway_that_is_down",
    ):
        assert test not in chosen, test


def _inner_pytest(tmp_path: Path, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """pytest run on the project from inside a test, with its own base temp directory."""
    return subprocs.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner"), *args],
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
