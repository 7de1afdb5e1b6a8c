"""``haios run`` on a local 3-node cluster: the loop, the desired state read as it goes, failures."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path

import pytest
from helpers import Invoke
from helpers.cluster import git, positions

from haios import controlfile
from haios.coord import GitBackend
from haios.errors import LockHeldError
from haios.ops import reconcile
from haios.ops.run import RUN_SHARD, Step, run
from haios.sim.check import sim_check
from haios.timefmt import utc

WRITE = (
    'printf \'{"g": %s, "node": "%s"}\' "$HAIOS_G" "$HAIOS_NODE" > "$HAIOS_STAGE/state.json"; '
    'printf "\\000\\001\\002%s" "$HAIOS_G" > "$HAIOS_STAGE/blob.bin"'
)


def _set(cluster: Path, old: str, new: str, message: str) -> None:
    path = cluster / "desired/state.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    git(cluster, "commit", "-qam", message)


def _command(cluster: Path, phase: str, script: str) -> None:
    quoted = script.replace("'", "''")
    text = (cluster / "desired/state.yaml").read_text()
    found = re.search(rf"(?m)^  {phase}:\n    on_partial: \w+\n(?:    #.*\n)?", text)
    assert found is not None
    _set(
        cluster,
        found.group(0),
        found.group(0) + f"    command: [sh, -c, '{quoted}']\n    timeout: 30s\n",
        f"{phase} runs a command",
    )


def _partition(cluster: Path, node: str, status: str) -> None:
    gossip = cluster / f"nodes/{node}/gossip"
    now = utc(time.time())
    body = {"node": node, "peers": {}, "partition_status": status, "since": now, "updated_at": now}
    controlfile.write_mapping(gossip, body, expected_version=controlfile.current_version(gossip))


def test_run_drives_iterations_and_data_holds_the_bytes_written(cluster: Path) -> None:
    _command(cluster, "CONSTRUCT", WRITE)
    seen: list[Step] = []
    report = run(cluster, iterations=2, progress=seen.append)
    assert (report.code, report.stopped, report.position) == (0, "done", (3, "IDLE"))
    assert [(s.g, s.phase) for s in seen][:2] == [(2, "ANALYZE"), (2, "BLUEPRINT")] and len(seen) == 10
    assert set(positions(cluster).values()) == {(3, "IDLE")}
    for n in ("node-1", "node-2", "node-3"):
        data = cluster / f"nodes/{n}/data"
        assert (data / "state.json").read_bytes() == f'{{"g": 3, "node": "{n}"}}'.encode()
        assert hashlib.sha256((data / "blob.bin").read_bytes()).hexdigest() == hashlib.sha256(b"\0\1\0023").hexdigest()
    assert "haios run: 10 transitions, g=1 IDLE -> g=3 IDLE (done)" in git(cluster, "log", "-1", "--format=%s")
    assert GitBackend(cluster).barrier().g == 3
    assert sim_check(cluster) == []
    assert reconcile(cluster).exit_code() == 0


def test_max_g_committed_while_running_stops_before_the_next_iteration(cluster: Path) -> None:
    def freeze(step: Step) -> None:
        if (step.g, step.phase) == (2, "BLUEPRINT"):
            _set(cluster, "max_g: null", "max_g: 2", "freeze at g=2")

    report = run(cluster, iterations=5, progress=freeze)
    assert (report.stopped, report.position, report.code) == ("max_g", (2, "IDLE"), 2)
    assert set(positions(cluster).values()) == {(2, "IDLE")}


def test_a_failing_command_aborts_the_transition_everywhere(cluster: Path) -> None:
    _command(cluster, "ANALYZE", 'test "$HAIOS_NODE" != node-2 || { echo "no space left" >&2; exit 5; }')
    report = run(cluster, iterations=1)
    assert (report.code, report.stopped) == (3, "failed")
    assert "node-2: ANALYZE of g=2 aborted: the command exited 5: no space left" in report.note
    assert set(positions(cluster).values()) == {(1, "IDLE")}
    assert sim_check(cluster) == []


def test_a_partitioned_member_is_left_out_then_caught_up(cluster: Path) -> None:
    _partition(cluster, "node-3", "PARTITIONED")
    report = run(cluster, iterations=1)
    assert report.code == 2 and report.steps[0].left_out == {"node-3": "PARTITIONED"}  # one member behind
    assert report.behind == {"node-3": "PARTITIONED"} and "left out: node-3: PARTITIONED" in report.note
    assert positions(cluster) == {"node-1": (2, "IDLE"), "node-2": (2, "IDLE"), "node-3": (1, "IDLE")}
    _partition(cluster, "node-3", "NORMAL")
    again = run(cluster, iterations=1)
    assert again.code == 0 and again.caught_up == ["node-3"]
    assert set(positions(cluster).values()) == {(3, "IDLE")}
    assert all(not s.left_out for s in again.steps)
    assert sim_check(cluster) == []
    assert reconcile(cluster).exit_code() == 0


def test_no_majority_blocks(cluster: Path) -> None:
    _partition(cluster, "node-2", "PARTITIONED")
    _partition(cluster, "node-3", "PARTITIONED")
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()  # instead of waiting out three heartbeat windows for them
    report = run(cluster, iterations=1, stop=stop)
    assert report.code == 3 and "only 1 of 3 members can take part, a majority (2) is needed" in report.note
    assert set(positions(cluster).values()) == {(1, "IDLE")}


def test_a_stop_request_ends_the_run_between_transitions(cluster: Path) -> None:
    stop = threading.Event()
    report = run(cluster, iterations=3, stop=stop, progress=lambda step: stop.set())
    assert (report.code, report.stopped, report.position) == (2, "stop", (2, "ANALYZE"))
    assert set(positions(cluster).values()) == {(2, "ANALYZE")}
    assert run(cluster, iterations=1).position == (2, "IDLE")  # the next run goes on from there


def test_one_run_at_a_time(cluster: Path) -> None:
    backend = GitBackend(cluster)
    lease = backend.acquire(RUN_SHARD, "someone-else", "t", 300, time.time())
    with pytest.raises(LockHeldError):
        run(cluster, iterations=1)
    backend.release(lease, time.time())


def test_cli(cluster: Path, cli: Invoke) -> None:
    result = cli("--repo", cluster, "run")
    assert result.exit_code == 1 and "nothing says how far to go" in result.output
    result = cli("--repo", cluster, "--output", "json", "run", "--until-g", "2")
    assert result.exit_code == 0 and '"stopped": "done"' in result.stdout
