"""The PhaseDriver with in-process participants on real node roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from haios import controlfile
from haios.cluster import LocalParticipant, PhaseDriver
from haios.errors import BarrierError, HaiosError
from haios.node import PhaseTx, init_node_root, scan_phases
from haios.vclock import VClock
from haios.wal import RecordType, read_records


def _roots(tmp_path: Path, n: int = 3) -> list[Path]:
    roots = []
    for i in range(1, n + 1):
        root = tmp_path / f"n{i}"
        init_node_root(root, f"n{i}", {"cluster": "c", "max_g": None})
        roots.append(root)
    return roots


def write_file(tx: PhaseTx) -> None:
    tx.intent(f"{tx.phase.lower()}.conf", f"g={tx.g}\n".encode())


def test_driver_commits_everywhere_and_orders_events(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    driver = PhaseDriver([LocalParticipant(r, write_file) for r in roots])
    for phase in ("ANALYZE", "BLUEPRINT", "CONSTRUCT", "VALIDATE", "IDLE"):
        result = driver.run(1, phase)
        assert result.outcome == "committed" and result.committed == ["n1", "n2", "n3"] and result.duration >= 0
    assert driver.next() == (2, "ANALYZE")
    for root in roots:
        assert controlfile.read_mapping(root / "state.txt")[0]["ph"] == "IDLE"
        events = [r.payload for r in read_records(root / "wal") if r.type is RecordType.EVENT]
        started = [VClock(e["vc"]) for e in events if e["name"] == "phase_transition.started"]
        assert len(started) == 5 and all(a.happened_before(b) for a, b in zip(started, started[1:], strict=False))
    # every node's COMMIT of ANALYZE causally precedes every node's start of BLUEPRINT (via the coordinator)
    commits = [
        VClock(r.payload["vc"])
        for root in roots
        for r in read_records(root / "wal")
        if r.type is RecordType.COMMIT_PHASE and r.payload["phase"] == "ANALYZE"
    ]
    starts = [
        VClock(r.payload["vc"])
        for root in roots
        for r in read_records(root / "wal")
        if r.type is RecordType.EVENT
        and r.payload["phase"] == "BLUEPRINT"
        and r.payload["name"] == "phase_transition.started"
    ]
    assert all(c.counter("coordinator") < s.counter("coordinator") for c in commits for s in starts)


def test_driver_aborts_everyone_when_one_cannot_prepare(tmp_path: Path) -> None:
    roots = _roots(tmp_path)

    def failing(tx: PhaseTx) -> None:
        raise HaiosError("executor failed")

    participants = [
        LocalParticipant(roots[0], write_file),
        LocalParticipant(roots[1], failing),
        LocalParticipant(roots[2], write_file),
    ]
    result = PhaseDriver(participants).run(1, "ANALYZE")
    assert result.outcome == "aborted" and set(result.failed) == {"n2"}
    assert scan_phases(roots[0])[(1, "ANALYZE")].ended == "ABORT_PHASE"
    assert not (roots[0] / "data/analyze.conf").exists()


def test_driver_coordinator_death_leaves_prepared_participants(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    driver = PhaseDriver([LocalParticipant(r, write_file) for r in roots])
    result = driver.run(1, "ANALYZE", stop_after_commits=1)
    assert result.outcome == "interrupted" and result.committed == ["n1"]
    assert scan_phases(roots[1])[(1, "ANALYZE")].prepared and scan_phases(roots[1])[(1, "ANALYZE")].ended is None
    with pytest.raises(BarrierError, match="half done"):
        driver.run(1, "BLUEPRINT")


def test_driver_refuses_out_of_order(tmp_path: Path) -> None:
    driver = PhaseDriver([LocalParticipant(r, write_file) for r in _roots(tmp_path, 1)])
    with pytest.raises(BarrierError, match="out of order"):
        driver.run(1, "CONSTRUCT")
