"""Traces of independent transitions — of different shards, with no participant in common — are
recovered at once by one reconcile, each under its own lease (``recovery.parallel_traces``); a trace
still waits for every earlier one it depends on, and nothing moves after one of those that did not
finish (PHASE_ORDER_BARRIER)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from helpers import Invoke, subprocs
from helpers.cluster import git, positions

from haios.node import Node
from haios.node.runner import run_phase
from haios.ops.reconcile import _run_in_order, independent
from haios.recovery.model import Plan, RunResult, TraceOutcome, TracePlan, Verdict

EVERYONE = ["node-1", "node-2", "node-3"]
PAIR = ["node-1", "node-2"]

# node-3's compensator, and the resumed BLUEPRINT command of node-1, each wait (at most 60 s) for the
# other to have started: run one after the other, they never meet
UNDO = """
import pathlib, sys, time
meet = pathlib.Path(MEET)
(meet / "undo-started").touch()
deadline = time.monotonic() + 60
while not (meet / "resumed-node-1").exists():
    if time.monotonic() > deadline:
        sys.exit("the other trace never started")
    time.sleep(0.02)
"""
WORK = """
import json, os, pathlib, sys, time
from haios.node.runner import phase_from_env

meet, node = pathlib.Path(MEET), os.environ["HAIOS_NODE"]
if "work" not in json.loads(os.environ["HAIOS_STEPS_DONE"]):
    with phase_from_env() as tx:
        tx.step("work", "ok")
if os.environ["HAIOS_RESUMED"] == "0":
    (meet / f"hung-{node}").touch()
    time.sleep(600)
if node == "node-1":
    (meet / "resumed-node-1").touch()
    deadline = time.monotonic() + 60
    while not (meet / "undo-started").exists():
        if time.monotonic() > deadline:
            sys.exit("the other trace never started")
        time.sleep(0.02)
(pathlib.Path(os.environ["HAIOS_STAGE"]) / "blueprint.txt").write_text(f"resumed on {node}\\n")
"""


def _edit(cluster: Path, path: str, old: str, new: str) -> None:
    text = (cluster / path).read_text()
    assert old in text
    (cluster / path).write_text(text.replace(old, new))


def _hang(root: Path, script: Path, meet: Path) -> None:
    """(g=2, BLUEPRINT) of the pair on ``root``, killed (runner and command) once past its step."""
    proc = subprocs.spawn(
        [sys.executable, "-m", "haios", "node", "run", root, "--g", "2", "--phase", "BLUEPRINT",
         "--participants", ",".join(PAIR), "--resumable", "--", sys.executable, script],
        env=dict(os.environ),
        stdout=subprocs.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (meet / f"hung-{root.name}").exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"{root.name} never reached its step"
        time.sleep(0.05)
    subprocs.kill_descendants(proc.pid)
    subprocs.kill_group(proc.pid)
    proc.wait(30)


def test_independent_transitions_are_recovered_at_once(cluster: Path, cli: Invoke, tmp_path: Path) -> None:
    meet = tmp_path / "meet"
    meet.mkdir()
    undo, work = tmp_path / "undo.py", tmp_path / "work.py"
    undo.write_text(f"MEET = {str(meet)!r}\n" + UNDO)
    work.write_text(f"MEET = {str(meet)!r}\n" + WORK)
    (cluster / "playbooks/meet-undo.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "haios/v1",
                "kind": "Playbook",
                "name": "meet-undo",
                "compensates": "test.meet",
                "run": {"command": [sys.executable, str(undo)]},
                "timeout": "120s",
            }
        )
    )
    _edit(cluster, "policies/thresholds.yaml", "    BLUEPRINT: 500ms", "    BLUEPRINT: 10ms")
    _edit(cluster, "desired/state.yaml", "  BLUEPRINT:\n    on_partial: auto", "  BLUEPRINT:\n    on_partial: resume")
    git(cluster, "add", "-A")
    git(cluster, "commit", "-qm", "tests: a compensator, BLUEPRINT resumes")
    roots = {n: cluster / "nodes" / n for n in EVERYONE}
    # node-3 died in (g=2, ANALYZE) after logging a side effect; the coordinator aborted that attempt
    # on the others and committed the transition with node-1 and node-2 alone ...
    for n in PAIR:
        assert run_phase(roots[n], 2, "ANALYZE", [], participants=EVERYONE, trace_id="first").outcome == "prepared"
        Node(roots[n]).resume(2, "ANALYZE").abort("participant(s) node-3 did not prepare")
    with Node(roots["node-3"]).begin(2, "ANALYZE", participants=EVERYONE, trace_id="first") as tx:
        tx.side_effect("meet-1", "test.meet", {"what": "x"}, "meet-undo", {"amount": 0, "currency": "EUR"})
    for n in PAIR:
        assert run_phase(roots[n], 2, "ANALYZE", [], participants=PAIR, trace_id="second", commit=True).outcome
    # ... and went on to BLUEPRINT, whose long command was killed mid-way on both
    for n in PAIR:
        _hang(roots[n], work, meet)

    deadline = time.monotonic() + 60
    while True:
        plan: dict[str, Any] = json.loads(cli("--repo", cluster, "-o", "json", "plan").stdout)
        verdicts = {(t["g"], t["phase"]): t["verdict"] for t in plan["traces"]}
        if verdicts.get((2, "BLUEPRINT")) != "wait" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert verdicts == {(2, "ANALYZE"): "rollback", (2, "BLUEPRINT"): "resume"}, plan

    result = cli("--repo", cluster, "-o", "json", "reconcile")
    assert result.exit_code == 0, result.output
    done = {(o["g"], o["phase"]): (o["verdict"], o["after"]) for o in json.loads(result.stdout)["traces"]}
    # node-3's compensator and node-1's resumed command met: the two traces ran at once
    assert done == {(2, "ANALYZE"): ("rollback", "CLEAN_EXIT"), (2, "BLUEPRINT"): ("forward", "CLEAN_EXIT")}
    assert (roots["node-1"] / "data/blueprint.txt").read_text() == "resumed on node-1\n"
    assert positions(cluster) == {"node-1": (2, "BLUEPRINT"), "node-2": (2, "BLUEPRINT"), "node-3": (1, "IDLE")}
    # each under its own lease: the audit commit names two fencing tokens
    assert git(cluster, "log", "-1", "--format=%B").count("Haios-Fencing-Token:") == 2


def _trace(g: int, phase: str, participants: list[str]) -> TracePlan:
    return TracePlan(f"t-{g}-{phase}", g, phase, "INTERRUPTED", Verdict.FORWARD, "", participants, [])


def test_independence_needs_another_shard_and_no_common_participant() -> None:
    a = _trace(2, "ANALYZE", ["node-3"])
    assert independent(a, _trace(2, "BLUEPRINT", PAIR))
    assert not independent(a, _trace(3, "ANALYZE", ["node-1"]))  # one shard, one lease: one after the other
    assert not independent(a, _trace(2, "BLUEPRINT", ["node-2", "node-3"]))  # node-3 orders them


class _Runner:
    """Runs a trace by waiting (at most ``patience`` s) until every trace named in ``meets`` started."""

    def __init__(self, meets: dict[str, list[str]], patience: float) -> None:
        self.started = {t: threading.Event() for names in meets.values() for t in names} | {
            t: threading.Event() for t in meets
        }
        self.meets, self.patience = meets, patience
        self.order: list[str] = []

    def run(self, trace: TracePlan) -> TraceOutcome:
        self.order.append(trace.trace_id)
        self.started.setdefault(trace.trace_id, threading.Event()).set()
        met = all(self.started[o].wait(self.patience) for o in self.meets.get(trace.trace_id, []))
        after = "CLEAN_EXIT" if met else "BLOCKED"
        return TraceOutcome(trace.trace_id, trace.g, trace.phase, trace.verdict, trace.state, after)


def _plan(*traces: TracePlan) -> Plan:
    plan = Plan.__new__(Plan)
    plan.traces = list(traces)
    return plan


def _run(runner: _Runner, plan: Plan, parallel: int) -> dict[str, str]:
    result = RunResult.__new__(RunResult)
    result.outcomes = []
    _run_in_order(runner, plan, result, lambda event: None, parallel)  # type: ignore[arg-type]
    return {o.trace_id: o.after for o in result.outcomes}


def test_the_scheduler_overlaps_independent_traces_and_keeps_the_barrier_for_the_others() -> None:
    a, b = _trace(2, "ANALYZE", ["node-3"]), _trace(2, "BLUEPRINT", PAIR)
    later = _trace(3, "ANALYZE", ["node-3"])  # depends on a (one shard)
    both = _Runner({a.trace_id: [b.trace_id], b.trace_id: [a.trace_id]}, patience=60)
    assert _run(both, _plan(a, b, later), parallel=4) == {
        a.trace_id: "CLEAN_EXIT",
        b.trace_id: "CLEAN_EXIT",
        later.trace_id: "CLEAN_EXIT",
    }
    assert both.order[-1] == later.trace_id  # after the one it depends on
    # one at a time: a waits for b in vain, ends unfinished, and what depends on it does not move
    alone = _Runner({a.trace_id: [b.trace_id]}, patience=0.2)
    outcomes = _run(alone, _plan(a, b, later), parallel=1)
    assert outcomes[a.trace_id] == "BLOCKED" and outcomes[b.trace_id] == "CLEAN_EXIT"
    assert outcomes[later.trace_id] == "INTERRUPTED" and alone.order == [a.trace_id, b.trace_id]
