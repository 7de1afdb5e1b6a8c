"""Tampering the default path must notice: a control file that fails its integrity check makes
plan and reconcile exit 5; a node root holding another node's state or WAL is a finding."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import Invoke

from haios.ops.doctor import run_doctor


def test_a_tampered_control_file_makes_plan_and_reconcile_exit_5(cluster: Path, cli: Invoke) -> None:
    fence = cluster / "nodes/node-2/fence"
    fence.write_bytes(fence.read_bytes().replace(b"\n#haios", b"x\n#haios", 1))  # the body no longer matches
    for command in ("plan", "reconcile"):
        result = cli("--repo", cluster, command)
        assert result.exit_code == 5, result.output
        assert "integrity: node-2:" in result.stdout and "fence" in result.stdout
    shutil.copy(cluster / "nodes/node-1/fence", fence)  # restored: all is well again
    assert cli("--repo", cluster, "plan").exit_code == 0


def test_state_copied_from_another_node_is_a_finding(cluster: Path) -> None:
    shutil.copy(cluster / "nodes/node-1/state.txt", cluster / "nodes/node-2/state.txt")
    found = [f for f in run_doctor(cluster).findings if f.kind == "control_file"]
    assert any("belongs to node 'node-1', not node-2" in f.summary for f in found), [f.summary for f in found]


def test_a_wal_linked_to_another_nodes_wal_is_a_finding(cluster: Path, cli: Invoke) -> None:
    wal = cluster / "nodes/node-3/wal"
    shutil.rmtree(wal)
    wal.symlink_to(cluster / "nodes/node-1/wal")
    found = [f for f in run_doctor(cluster).findings if f.kind == "control_file"]
    assert any("wal: is a symlink" in f.summary for f in found), [f.summary for f in found]
    assert cli("--repo", cluster, "plan").exit_code == 5


def _wal_finding(cluster: Path) -> list[str]:
    """The nodes of doctor's (default pass) mid-log corruption findings."""
    return [n for f in run_doctor(cluster).findings if f.kind == "wal_corrupt" for n in f.nodes]


def test_corruption_in_bytes_an_earlier_pass_read_is_noticed_by_the_default_pass(cluster: Path, cli: Invoke) -> None:
    """doctor and plan without --full: the cursor of the last pass is no reason to trust what is
    behind it. A bit flip in the last record read, and a sector rewritten in place, are both found."""
    from helpers.wal import flip, segments

    assert _wal_finding(cluster) == []  # a pass reads everything and remembers its cursor
    wal = cluster / "nodes/node-2/wal"
    segment = segments(wal)[-1]
    flip(segment, segment.stat().st_size - 3)  # inside the last record before the cursor
    assert _wal_finding(cluster) == ["node-2"], "a flip in the last record read went unnoticed"
    assert cli("--repo", cluster, "plan").exit_code == 3

    other = cluster / "nodes/node-3/wal"
    assert _wal_finding(cluster) == ["node-2"]
    victim = segments(other)[-1]
    data = bytearray(victim.read_bytes())
    data[512:1024] = bytes(512)  # a zeroed sector in the middle, the size unchanged
    victim.write_bytes(bytes(data))
    assert _wal_finding(cluster) == ["node-2", "node-3"], "a rewritten sector went unnoticed"
