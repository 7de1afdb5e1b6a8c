"""``haios node run``: an operator's command inside a phase transaction, on a real node root."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import subprocs

from haios import controlfile
from haios.errors import BarrierError, UsageError
from haios.node import Node, init_node_root, manifest, scan_phases
from haios.node.runner import participate, run_phase, stage_changes
from haios.wal import RecordType, read_records

PROJECT = Path(__file__).parent.parent.parent


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "n1"
    init_node_root(path, "n1", {"cluster": "c", "max_g": None})
    return path


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_changed_added_and_removed_files_become_intents_byte_exact(root: Path) -> None:
    first = run_phase(
        root, 1, "ANALYZE", sh('printf "old" > "$HAIOS_STAGE/keep"; echo x > "$HAIOS_STAGE/gone"'), commit=True
    )
    assert first.outcome == "committed" and first.changed == ["gone", "keep"]
    script = (
        'printf \'{"g": %s}\' "$HAIOS_G" > "$HAIOS_STAGE/doc.json"; '
        'head -c 300 /dev/urandom > "$HAIOS_STAGE/sub/blob.bin" || { mkdir "$HAIOS_STAGE/sub"; '
        'head -c 300 /dev/urandom > "$HAIOS_STAGE/sub/blob.bin"; }; rm "$HAIOS_STAGE/gone"; cp "$HAIOS_STAGE/sub/blob.bin" "$HAIOS_ROOT/../expected.bin"'
    )
    done = run_phase(root, 1, "BLUEPRINT", sh(script))
    assert done.outcome == "prepared" and done.changed == ["doc.json", "sub/blob.bin"] and done.removed == ["gone"]
    assert (root / "data/doc.json").read_bytes() == b'{"g": 1}'  # no newline, no footer
    assert (root / "data/sub/blob.bin").read_bytes() == (root.parent / "expected.bin").read_bytes()
    assert (root / "data/keep").read_bytes() == b"old" and not (root / "data/gone").exists()
    assert manifest.check(root) == []
    types = [r.type for r in read_records(root / "wal")][-4:]
    assert types == [RecordType.INTENT] * 3 + [RecordType.PREPARE]
    Node(root).resume(1, "BLUEPRINT").commit()
    assert not list((root / "stage").iterdir())


def test_a_command_editing_in_place_reaches_neither_data_nor_the_snapshot(root: Path) -> None:
    run_phase(root, 1, "ANALYZE", sh('printf "original" > "$HAIOS_STAGE/f"'), commit=True)
    inode = os.stat(root / "data/f").st_ino
    # edit the staged file in place (same inode), then look at data/ and the snapshot from inside
    script = (
        'printf "EDITED" | dd of="$HAIOS_STAGE/f" conv=notrunc 2>/dev/null; '
        'cat "$HAIOS_ROOT/data/f" "$HAIOS_ROOT/snapshots/$HAIOS_G-$HAIOS_PHASE/f" > "$HAIOS_ROOT/../seen"; exit 1'
    )
    done = run_phase(root, 1, "BLUEPRINT", sh(script))
    assert done.outcome == "aborted" and done.reason == "the command exited 1"
    assert (root.parent / "seen").read_bytes() == b"originaloriginal"
    assert (root / "data/f").read_bytes() == b"original" and os.stat(root / "data/f").st_ino == inode


def test_a_failing_command_aborts_with_its_last_output(root: Path) -> None:
    done = run_phase(root, 1, "ANALYZE", sh('echo "disk quota exceeded" >&2; touch "$HAIOS_STAGE/x"; exit 7'))
    assert (done.outcome, done.exit_code) == ("aborted", 7)
    assert done.reason.startswith("the command exited 7: ") and "disk quota exceeded" in done.reason
    assert not (root / "data/x").exists()
    log = scan_phases(root)[(1, "ANALYZE")]
    assert log.ended == "ABORT_PHASE"
    assert b"disk quota exceeded" in (root / "run.log").read_bytes()  # the output kept for the operator


def test_a_command_that_overruns_is_stopped_and_the_phase_aborted(root: Path) -> None:
    started = time.monotonic()
    done = run_phase(root, 1, "ANALYZE", sh("sleep 30"), timeout=0.5)
    assert done.outcome == "aborted" and "past its timeout of 0.5 s" in done.reason
    assert time.monotonic() - started < 20
    state, _ = controlfile.read_mapping(root / "state.txt")
    assert state["status"] == "READY"


def test_side_effects_logged_from_inside_the_command(root: Path) -> None:
    code = (
        "from haios.node.runner import phase_from_env\n"
        "with phase_from_env() as tx:\n"
        "    tx.side_effect('vm-1', 'fakecloud.vm', {'size': 's'}, 'fakecloud-vm', {'amount': 1, 'currency': 'EUR'})\n"
        "    tx.step('download', 'ok')\n"
    )
    done = run_phase(root, 1, "ANALYZE", [sys.executable, "-c", code], env={"PYTHONPATH": str(PROJECT)})
    assert done.outcome == "prepared", done.reason
    log = scan_phases(root)[(1, "ANALYZE")]
    assert set(log.side_effects) == {"vm-1"} and log.steps["download"] == "ok"
    assert log.steps["haios.command"]["resumable"] is False  # the command line, logged with the phase


def test_what_data_cannot_take_aborts_the_phase(root: Path) -> None:
    done = run_phase(root, 1, "ANALYZE", sh('ln -s /etc/passwd "$HAIOS_STAGE/link"'))
    assert done.outcome == "aborted" and "left a symlink" in done.reason
    with pytest.raises(UsageError, match="special file"):
        (root / "stage2").mkdir()
        os.mkfifo(root / "stage2/pipe")
        stage_changes(root / "data", root / "stage2")


def test_participate_answers_each_request_on_its_own(root: Path) -> None:
    request = {"g": 1, "phase": "ANALYZE", "vc": {"coordinator": 1}}
    answer = participate(
        root, {**request, "op": "prepare", "participants": ["n1"], "trace_id": "t1", "command": sh("true")}
    )
    assert answer["outcome"] == "prepared" and answer["vc"]["coordinator"] == 1
    assert participate(root, {**request, "op": "commit"})["outcome"] == "committed"
    assert participate(root, {**request, "op": "commit"})["outcome"] == "committed"  # a retry
    assert participate(root, {**request, "op": "abort"})["outcome"] == "committed"  # too late to abort
    with pytest.raises(BarrierError, match="not open"):
        participate(root, {**request, "phase": "BLUEPRINT", "op": "commit"})
    with pytest.raises(UsageError):
        participate(root, {"op": "prepare", "g": "1", "phase": "ANALYZE"})
    events = [r.payload.get("name") for r in read_records(root / "wal") if r.type is RecordType.EVENT]
    assert events == ["phase_transition.started", "phase_transition.finished"]


def test_cli_exit_codes_and_sigterm(root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    base = [sys.executable, "-m", "haios", "node", "run", str(root)]
    ok = subprocs.run(
        [*base, "--g", "1", "--phase", "ANALYZE", "--commit", "--", "sh", "-c", "true"],
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["outcome"] == "committed"
    bad = subprocs.run(
        [*base, "--g", "1", "--phase", "BLUEPRINT", "--", "false"], env=env, timeout=60, capture_output=True, text=True
    )
    assert bad.returncode == 2 and json.loads(bad.stdout)["outcome"] == "aborted"
    proc = subprocs.spawn([*base, "--g", "1", "--phase", "BLUEPRINT", "--", "sleep", "60"], env=env)
    deadline = time.monotonic() + 60
    while not (root / "stage/1-BLUEPRINT").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == 1
    assert scan_phases(root)[(1, "BLUEPRINT")].ended == "ABORT_PHASE"
