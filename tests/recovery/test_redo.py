"""ABORT + REDO: a version conflict met while rolling forward is undone from the WAL and the replay
done again (bounded); one that redoing cannot clear is a finding naming the file and both versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Invoke
from helpers.cluster import wait_for_phi

from haios import controlfile
from haios.errors import VersionConflict
from haios.node import Node
from haios.node.manifest import MANIFEST, file_sha256
from haios.node.recover import forward
from haios.recovery.journal import JOURNAL_DIR, load
from haios.sim.check import sim_check

FILE = "analyze/x.conf"


def _half_committed(cluster: Path) -> Path:
    """(g=2, ANALYZE) committed on node-2 and node-3, PREPAREd on node-1 (its intent applied)."""
    parts = ["node-1", "node-2", "node-3"]
    for n in parts:
        tx = Node(cluster / "nodes" / n).begin(2, "ANALYZE", participants=parts, trace_id="t-redo")
        tx.intent(FILE, f"from {n}\n".encode())
        tx.prepare()
        if n != "node-1":
            tx.commit()
        tx.close()
    wait_for_phi(cluster)
    return cluster / "nodes/node-1"


def _manifest_says(root: Path, version: int, sha: str, size: int) -> None:
    cf = controlfile.read(root / MANIFEST)
    body = {"files": {**json.loads(cf.body)["files"], FILE: [version, sha, size]}}
    controlfile.write(root / MANIFEST, json.dumps(body) + "\n", expected_version=cf.version)


def test_a_manifest_that_disagrees_with_the_wal_is_redone_and_the_phase_rolls_forward(
    cluster: Path, cli: Invoke
) -> None:
    root = _half_committed(cluster)
    # a manifest write put back or half done: it names a version the WAL never wrote
    _manifest_says(root, 7, file_sha256(root / "data" / FILE) or "", 12)
    done = cli("--repo", cluster, "reconcile")
    assert done.exit_code == 0, done.stdout + done.stderr
    assert (root / "data" / FILE).read_bytes() == b"from node-1\n"
    (path,) = (cluster / JOURNAL_DIR).glob("*.yaml")
    (step,) = [s for s in load(path).steps if s["action"] == "forward"]
    assert step["outcome"] == "committed"
    assert step["redone"] == [f"data/{FILE}: absent by the WAL; its manifest entry v7 dropped"]
    assert sim_check(cluster) == []


def test_a_conflict_redoing_cannot_clear_is_a_finding_naming_both_versions(cluster: Path, cli: Invoke) -> None:
    root = _half_committed(cluster)
    (root / "data" / FILE).write_bytes(b"someone else's\n")  # neither absent (the WAL) nor the replay's bytes
    _manifest_says(root, 7, file_sha256(root / "data" / FILE) or "", 15)
    for _ in range(2):  # every run says the same, and changes nothing
        done = cli("--repo", cluster, "reconcile")
        assert done.exit_code == 3, done.stdout + done.stderr
        out = " ".join((done.stdout + done.stderr).split())
        assert f"data/{FILE}: version conflict: expected absent, found v7, still after 3 attempts" in out
        assert "absent by the WAL, but its bytes are neither absent nor the replay's" in out
        assert (root / "data" / FILE).read_bytes() == b"someone else's\n"


def test_a_control_file_written_by_another_writer_first_is_read_again(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """state.txt changed between the read and the write of the commit: the next attempt reads it
    again, and state.txt ends where the WAL says."""
    root = _half_committed(cluster)
    real = controlfile.write_mapping
    conflicts = []

    def once(path: Path, body: dict[str, object], *, expected_version: int | None) -> int:
        if path.name == "state.txt" and not conflicts:
            conflicts.append(path)
            raise VersionConflict(path, expected=expected_version, actual=(expected_version or 0) + 1)
        return real(path, body, expected_version=expected_version)

    monkeypatch.setattr(controlfile, "write_mapping", once)
    answer = forward(root, trace_id="t-redo", token=10**6, g=2, phase="ANALYZE")
    assert conflicts and answer["outcome"] == "committed"
    state, _ = controlfile.read_mapping(root / "state.txt")
    assert (state["g"], state["ph"], state["status"]) == (2, "ANALYZE", "READY")
