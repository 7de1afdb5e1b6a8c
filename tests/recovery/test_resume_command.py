"""A long CONSTRUCT killed mid-way is resumed after its last STEP — not rolled back — when its
command declared itself resumable (on_partial: resume, CONSTRUCT's default); plan shows the steps
skipped; a command that cannot be resumed (its stage gone) is rolled back instead."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from helpers import Invoke, subprocs
from helpers.cluster import git, positions

from haios import controlfile
from haios.config import load_repo
from haios.node.runner import participate, run_phase
from haios.wal import read_records

NODES = ("node-1", "node-2", "node-3")

# The phase's command: two steps, each logged when done and skipped when $HAIOS_STEPS_DONE has it.
# Outside the stage it counts how often each step's work ran; with HANG set, a first run stops
# between the steps (touches HANG and sleeps) — where the test kills it.
COMMAND = r"""
import json, os, pathlib, time
from haios.node.runner import phase_from_env

done = json.loads(os.environ["HAIOS_STEPS_DONE"])
count = pathlib.Path(COUNT_DIR)
node = os.environ["HAIOS_NODE"]
stage = pathlib.Path(os.environ["HAIOS_STAGE"])
if "fetch" not in done:
    (stage / "fetched.txt").write_text(f"fetched on {node}\n")
    with open(count / f"fetch-{node}", "a") as fh:
        fh.write(os.environ["HAIOS_RESUMED"])
    with phase_from_env() as tx:
        tx.step("fetch", "ok")
if os.environ.get("HANG") and os.environ["HAIOS_RESUMED"] == "0":
    pathlib.Path(os.environ["HANG"]).touch()
    time.sleep(600)
(stage / "built.txt").write_text("built from " + (stage / "fetched.txt").read_text())
with open(count / f"build-{node}", "a") as fh:
    fh.write(os.environ["HAIOS_RESUMED"])
"""


def _construct_killed_on_node_3(cluster: Path, tmp_path: Path, *, command_lives: list[int] | None = None) -> Path:
    """g=2: ANALYZE and BLUEPRINT committed everywhere; CONSTRUCT prepared on node-1 and node-2,
    and on node-3 killed (runner and command, SIGKILL) after its first STEP. Returns the count dir."""
    thresholds = cluster / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    CONSTRUCT: 1s", "    CONSTRUCT: 10ms"))
    git(cluster, "commit", "-qam", "tests: a short CONSTRUCT prior")
    roots = {n: cluster / "nodes" / n for n in NODES}
    for phase in ("ANALYZE", "BLUEPRINT"):
        for n in NODES:
            assert run_phase(roots[n], 2, phase, [], participants=list(NODES), commit=True).outcome == "committed"
    count = tmp_path / "count"
    count.mkdir()
    script = tmp_path / "construct.py"
    script.write_text(f"COUNT_DIR = {str(count)!r}\n" + COMMAND)  # a resumed run has none of this run's env
    command = [sys.executable, str(script)]
    env: dict[str, str] = {}
    for n in ("node-1", "node-2"):
        done = run_phase(roots[n], 2, "CONSTRUCT", command, participants=list(NODES), env=env, resumable=True)
        assert done.outcome == "prepared", done.reason
    hang = tmp_path / "hang"
    proc = subprocs.spawn(
        [
            sys.executable,
            "-m",
            "haios",
            "node",
            "run",
            roots["node-3"],
            "--g",
            "2",
            "--phase",
            "CONSTRUCT",
            "--participants",
            ",".join(NODES),
            "--resumable",
            "--",
            *command,
        ],
        env={**os.environ, **env, "HANG": str(hang)},
        stdout=subprocs.subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not hang.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the command never reached its first STEP"
        time.sleep(0.05)
    if command_lives is not None:  # only the runner dies: its command goes on (it has a session of its own)
        command_lives += subprocs.descendants(proc.pid)
    else:
        subprocs.kill_descendants(proc.pid)  # the host dies: the command and the runner, mid-phase
    subprocs.kill_group(proc.pid)
    proc.wait(30)
    return count


def _plan(cli: Invoke, cluster: Path) -> dict[str, Any]:
    """The plan once CONSTRUCT's Φ timeout has expired (bounded wait)."""
    deadline = time.monotonic() + 60
    while True:
        plan = json.loads(cli("--repo", cluster, "-o", "json", "plan").stdout)
        waiting = [t for t in plan["traces"] if t["verdict"] == "wait"]
        if not waiting or time.monotonic() > deadline:
            return plan
        time.sleep(0.2)


def test_a_killed_resumable_construct_is_resumed_after_its_last_step(
    cluster: Path, cli: Invoke, tmp_path: Path
) -> None:
    assert load_repo(cluster).desired.phases["CONSTRUCT"].on_partial == "resume"  # the default
    count = _construct_killed_on_node_3(cluster, tmp_path)
    assert (count / "fetch-node-3").read_text() == "0" and not (count / "build-node-3").exists()

    plan = _plan(cli, cluster)
    (trace,) = plan["traces"]
    assert (trace["g"], trace["phase"], trace["verdict"]) == (2, "CONSTRUCT", "resume")
    (step,) = [s for s in trace["steps"] if s["action"] == "resume"]
    assert step["node"] == "node-3" and step["skip"] == ["fetch"]
    shown = cli("--repo", cluster, "plan").stdout
    assert "run its command again after its last STEP, skipping fetch" in shown

    result = cli("--repo", cluster, "-o", "json", "reconcile")
    assert result.exit_code == 0, result.output
    (outcome,) = json.loads(result.stdout)["traces"]
    assert outcome["after"] == "CLEAN_EXIT" and outcome["verdict"] == "forward"
    # the first step ran once, on the first run; the second once, on the resumed run
    assert (count / "fetch-node-3").read_text() == "0" and (count / "build-node-3").read_text() == "1"
    assert positions(cluster) == {n: (2, "CONSTRUCT") for n in NODES}
    data = cluster / "nodes/node-3/data"
    assert (data / "built.txt").read_text() == "built from fetched on node-3\n"  # the killed run's stage kept
    journal = next((cluster / "status/recoveries").glob(f"{outcome['trace_id']}.yaml")).read_text()
    assert "resume" in journal and "fetch" in journal
    assert not (cluster / "nodes/node-3/stage/2-CONSTRUCT").exists()


def test_a_command_still_running_is_waited_for_not_run_twice_nor_rolled_back(
    cluster: Path, cli: Invoke, tmp_path: Path
) -> None:
    alive: list[int] = []
    count = _construct_killed_on_node_3(cluster, tmp_path, command_lives=alive)
    assert alive
    assert _plan(cli, cluster)["traces"][0]["verdict"] == "resume"
    waiting = cli("--repo", cluster, "-o", "json", "reconcile")
    assert waiting.exit_code == 2, waiting.output
    (outcome,) = json.loads(waiting.stdout)["traces"]
    assert "its phase command is still running on node-3" in outcome["note"]
    assert outcome["after"] == "INTERRUPTED" and not (count / "build-node-3").exists()  # not started twice
    journal = yaml.safe_load((cluster / "status/recoveries" / f"{outcome['trace_id']}.yaml").read_text())
    assert journal["resume_attempts"] == 0  # a command at work is not a failed attempt
    for pid in alive:  # now the host dies after all
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while any(subprocs.alive(pid) for pid in alive) and time.monotonic() < deadline:
        subprocs.reap_zombies()
        time.sleep(0.05)
    done = cli("--repo", cluster, "-o", "json", "reconcile")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["traces"][0]["after"] == "CLEAN_EXIT"
    assert (count / "fetch-node-3").read_text() == "0" and (count / "build-node-3").read_text() == "1"


def test_a_resumable_command_whose_stage_is_gone_is_rolled_back(cluster: Path, cli: Invoke, tmp_path: Path) -> None:
    _construct_killed_on_node_3(cluster, tmp_path)
    shutil.rmtree(cluster / "nodes/node-3/stage/2-CONSTRUCT")  # the work of its steps is lost
    assert _plan(cli, cluster)["traces"][0]["verdict"] == "resume"
    result = cli("--repo", cluster, "-o", "json", "reconcile")
    (outcome,) = json.loads(result.stdout)["traces"]
    assert outcome["verdict"] == "rollback" and outcome["after"] == "CLEAN_EXIT", result.stdout
    assert positions(cluster) == {n: (2, "BLUEPRINT") for n in NODES}
    state, _ = controlfile.read_mapping(cluster / "nodes/node-3/state.txt")
    assert state["ph"] == "BLUEPRINT"


def test_without_a_resumable_command_construct_rolls_back_as_before(cluster: Path, cli: Invoke) -> None:
    roots = {n: cluster / "nodes" / n for n in NODES}
    thresholds = cluster / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    CONSTRUCT: 1s", "    CONSTRUCT: 10ms"))
    git(cluster, "commit", "-qam", "tests: a short CONSTRUCT prior")
    for phase in ("ANALYZE", "BLUEPRINT"):
        for n in NODES:
            run_phase(roots[n], 2, phase, [], participants=list(NODES), commit=True)
    from haios.node import Node

    Node(roots["node-1"]).begin(2, "CONSTRUCT", participants=list(NODES)).close()  # began, nothing more
    plan = _plan(cli, cluster)
    assert plan["traces"][0]["verdict"] == "rollback"


def test_haios_run_tells_each_member_that_the_phase_command_is_resumable(cluster: Path, cli: Invoke) -> None:
    desired = cluster / "desired/state.yaml"
    text = desired.read_text()
    assert "  CONSTRUCT:\n    on_partial: resume\n" in text  # what init and sim init write
    root = cluster / "nodes/node-1"
    for phase in ("ANALYZE", "BLUEPRINT"):
        run_phase(root, 2, phase, [], commit=True)
    request = {
        "op": "prepare",
        "g": 2,
        "phase": "CONSTRUCT",
        "participants": ["node-1"],
        "trace_id": "run-2-CONSTRUCT",
        "command": ["true"],
        "timeout": 60,
        "resumable": True,
    }
    assert participate(root, request)["outcome"] == "prepared"
    declared = [r.payload["outcome"] for r in read_records(root / "wal") if r.payload.get("name") == "haios.command"]
    assert declared[-1] == {"argv": ["true"], "timeout": 60, "resumable": True}
    # resumable says what the command does: without one it is refused
    desired.write_text(
        text.replace(
            "  CONSTRUCT:\n    on_partial: resume\n", "  CONSTRUCT:\n    on_partial: resume\n    resumable: true\n"
        )
    )
    result = cli("--repo", cluster, "validate")
    assert result.exit_code != 0 and "resumable says what the phase's command does: set command" in result.output
