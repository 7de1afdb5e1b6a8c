"""--output ndjson: versioned events from plan, reconcile and doctor, valid against
schemas/event.schema.json, in the order things happened, with the trace ids of the journals."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import Invoke, subprocs
from helpers.cluster import git, plant

from haios.events import TYPES, make
from haios.recovery.journal import JOURNAL_DIR, load

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas/event.schema.json").read_text())


def events(stdout: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in stdout.splitlines()]
    for event in found:
        jsonschema.validate(event, SCHEMA)
    return found


def test_the_schema_knows_every_type() -> None:
    assert SCHEMA["properties"]["type"]["enum"] == list(TYPES)
    with pytest.raises(ValueError, match="unknown event type"):
        make("nonsense")


def test_reconcile_streams_what_happens(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    result = cli("--repo", cluster, "-o", "ndjson", "reconcile")
    assert result.exit_code == 0, result.output
    stream = events(result.stdout)
    (journal_path,) = (cluster / JOURNAL_DIR).glob("*.yaml")
    journal = load(journal_path)
    assert [e["type"] for e in stream] == [
        "detection",
        "trace.state",
        *["recovery.step"] * len(journal.steps),
        "trace.state",
        "phase_transition.finished",
        "trace",
        "phase_ready",  # the barrier reached (g=1, IDLE): every member stands there again
        "commit",
        "run",
    ]
    assert {e["trace_id"] for e in stream if e["type"] not in ("commit", "run", "phase_ready")} == {journal.trace_id}
    steps = [e for e in stream if e["type"] == "recovery.step"]
    assert [(e["node"], e["action"], e["outcome"]) for e in steps] == [
        (s["node"], s["action"], s["outcome"]) for s in journal.steps
    ]
    assert steps[0]["action"] == "compensate" and steps[0]["timings"]["sel_compensate"] > 0
    states = [(e["from"], e["to"]) for e in stream if e["type"] == "trace.state"]
    assert states == [("INTERRUPTED", "ROLLBACK"), ("ROLLBACK", "CLEAN_EXIT")]
    (detected,) = [e for e in stream if e["type"] == "detection"]
    assert detected["transition"] == "FAILED_PARTIAL" and journal.transition == "FAILED_PARTIAL"
    (finished,) = [e for e in stream if e["type"] == "phase_transition.finished"]
    assert (finished["g"], finished["phase"], finished["outcome"]) == (2, "ANALYZE", "aborted")
    assert finished["nodes"] == ["node-1", "node-2", "node-3"] and finished["vc"]["node-1"] > 0
    assert journal.finished is not None and journal.finished["vc"] == finished["vc"]
    (ready,) = [e for e in stream if e["type"] == "phase_ready"]
    assert (ready["g"], ready["phase"]) == (1, "IDLE")
    assert "barrier: phase_ready(g=1) at IDLE" in git(cluster, "log", "-1", "--format=%B")
    assert stream[-2]["commit"] == git(cluster, "rev-parse", "HEAD").strip()
    assert stream[-1]["exit_code"] == 0
    assert all(a["ts"] <= b["ts"] for a, b in zip(stream[1:], stream[2:], strict=False))  # in the order it happened


def _until_doctor_finds(cluster: Path, kind: str, limit: float = 60.0) -> None:
    from haios.ops.doctor import run_doctor

    deadline = time.monotonic() + limit
    while not [f for f in run_doctor(cluster).findings if f.kind == kind]:
        assert time.monotonic() < deadline, f"doctor found no {kind} within {limit} s"
        time.sleep(0.1)


def test_plan_and_doctor_events(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    result = cli("--repo", cluster, "-o", "ndjson", "plan")
    assert result.exit_code == 2
    stream = events(result.stdout)
    assert [e["type"] for e in stream] == ["detection", "plan.step", "plan.step", "plan"]
    assert [e["node"] for e in stream if e["type"] == "plan.step"] == ["node-2", "node-3"]
    assert stream[0]["verdict"] == "forward" and stream[-1]["exit_code"] == 2
    # plan rolls a commit on one participant forward at once; doctor names the others only once
    # they have missed it for the phase's Φ timeout, which the sim's durations on a loaded machine
    # can make longer than the time since the commit
    _until_doctor_finds(cluster, "partial_commit")
    result = cli("--repo", cluster, "-o", "ndjson", "doctor")
    stream = events(result.stdout)
    assert stream[-1]["type"] == "doctor" and stream[-1]["exit_code"] == result.exit_code
    findings = [e for e in stream if e["type"] == "finding"]
    assert len(findings) == stream[-1]["findings"] and findings
    assert any(f["kind"] == "partial_commit" for f in findings)


def test_alerts_are_events_and_trace_ids_reach_the_log(cluster: Path) -> None:
    (cluster / "playbooks/fakecloud-vm.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: fakecloud-vm\ncompensates: fakecloud.vm\n"
        'run:\n  command: [sh, -c, "echo no >&2; exit 3"]\nnon_retryable_exit_codes: [3]\ntimeout: 10s\n'
    )
    git(cluster, "commit", "-qam", "tests: a compensator that can never succeed")
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    # a real process: the log lines go where the command line sends them (stderr, with -v)
    haios = Path(sys.executable).parent / "haios"
    result = subprocs.run(
        [str(haios), "--repo", str(cluster), "-o", "ndjson", "-v", "reconcile"], capture_output=True, text=True
    )
    assert result.returncode == 3, result.stderr
    stream = events(result.stdout)
    (alert,) = [e for e in stream if e["type"] == "alert"]
    assert (alert["alert"], alert["state"], alert["severity"]) == ("sel_compensator_failed", "firing", "page")
    trace = alert["trace_id"]
    assert f"haios: trace={trace} recovery.step node=node-1 action=compensate outcome=failed" in result.stderr
    assert f"haios: trace={trace} alert alert=sel_compensator_failed" in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["type"] == "run"


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("validate",),
        ("audit",),
        ("override", "list"),
        ("sim", "check"),
    ],
)
def test_every_command_with_an_output_option_streams_one_object_a_line(
    cluster: Path, cli: Invoke, args: tuple[str, ...]
) -> None:
    """A command without an event stream is a stream of one object: never pretty, multi-line JSON."""
    result = cli("--repo", cluster, "-o", "ndjson", *args)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), result.output


def test_audit_outside_a_repo_is_the_one_line_error_every_command_gives(cli: Invoke, tmp_path: Path) -> None:
    for args in (("audit",), ("plan",), ("status",)):
        result = cli("--repo", tmp_path, *args)
        assert result.exit_code == 1 and "not a haios desired-state repo" in result.stderr, result.output
    (tmp_path / "haios.yaml").write_text("apiVersion: haios/v1\n")
    result = cli("--repo", tmp_path, "audit")
    assert result.exit_code == 1 and "not a git repository" in result.stderr
    assert "internal error" not in result.output and len(result.stderr.strip().splitlines()) == 1
