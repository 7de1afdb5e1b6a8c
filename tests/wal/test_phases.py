"""The one WAL phase projection: which attempt each record counts for."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from haios.wal import RecordType
from haios.wal.phases import ABANDON_STEP, PhaseLog, Phases, scan
from haios.wal.reader import Record


def _rec(
    lamport: int, rtype: RecordType, trace: str = "a", /, *, g: int = 1, phase: str = "ANALYZE", **fields: Any
) -> Record:
    payload = {"node": "n1", "g": g, "phase": phase, "trace_id": trace, "ts": float(lamport), **fields}
    raw = json.dumps(payload).encode()
    return Record(lamport, rtype, "0000000000000000-0000000000000001.wal", 64 * lamport, 0, 0, raw)


def _begin(lamport: int, trace: str = "a", phase: str = "ANALYZE") -> Record:
    return _rec(lamport, RecordType.BEGIN_PHASE, trace, phase=phase, snapshot="s", participants=["n1"])


def _effect(lamport: int, key: str, trace: str = "a") -> Record:
    fields = {"key": key, "kind": "vm", "params": {}, "compensator": "c", "cost": None}
    return _rec(lamport, RecordType.SIDE_EFFECT, trace, **fields)


def test_body_records_count_only_while_the_attempt_is_open() -> None:
    logs = scan(
        [
            _begin(1),
            _effect(2, "k0"),
            _rec(3, RecordType.PREPARE, intent_count=0, digest="d"),
            _rec(4, RecordType.COMMIT_PHASE, digest="d"),
            _effect(5, "late"),  # after the end: not the attempt's
        ]
    )
    log = logs[(1, "ANALYZE")]
    assert (list(log.side_effects), log.prepared, log.ended) == (["k0"], "d", "COMMIT_PHASE")
    assert (log.begin_ts, log.end_ts, log.end_lamport, log.last_ts) == (1.0, 4.0, 4, 4.0)


def test_recovery_speaks_of_an_attempt_after_other_phases_began() -> None:
    logs = scan(
        [
            _begin(1),
            _effect(2, "k0"),
            _effect(3, "k1"),
            _rec(4, RecordType.ABORT_PHASE, reason="r"),
            _begin(5, "b", phase="BLUEPRINT"),
            _rec(6, RecordType.COMPENSATED, key="k1", result={}),
            _rec(
                7,
                RecordType.RECOVERY,
                "trace-x",
                step=ABANDON_STEP,
                token=1,
                shard="ANALYZE",
                outcome={"abandoned": ["k0"]},
            ),
        ]
    )
    log = logs[(1, "ANALYZE")]
    assert (list(log.compensated), log.abandoned, log.uncompensated) == (["k1"], ["k0"], [])
    assert [r["step"] for r in log.recovery] == [ABANDON_STEP]


def test_a_compensation_belongs_to_the_attempt_its_trace_names() -> None:
    records = [
        _begin(1, "first"),
        _effect(2, "k0", "first"),
        _rec(3, RecordType.ABORT_PHASE, "first", reason="r"),
        _begin(4, "second"),
        _effect(5, "k0", "second"),
        _rec(6, RecordType.COMMIT_PHASE, "second", digest="d"),
        _rec(7, RecordType.COMPENSATED, "first", key="k0", result={}),
    ]
    latest = scan(records)[(1, "ANALYZE")]
    assert (latest.trace_id, latest.uncompensated) == ("second", ["k0"])  # the first attempt's record is not its
    pinned = scan(records, begun_at=1)[(1, "ANALYZE")]
    assert (pinned.trace_id, pinned.ended, list(pinned.compensated)) == ("first", "ABORT_PHASE", ["k0"])


def test_lean_attempts_carry_the_projection_on() -> None:
    phases = Phases()
    for record in (_begin(1), _effect(2, "k0"), _effect(3, "k1")):
        phases.fold(record)
    kept = [PhaseLog(**asdict(log.lean())) for log in phases.logs.values()]  # as a cache keeps it, as JSON
    assert kept[0].side_effects == {"k0": {}, "k1": {}}
    again = Phases(kept)
    again.fold(_rec(4, RecordType.ABORT_PHASE, reason="r"))
    again.fold(_rec(5, RecordType.COMPENSATED, key="k0", result={"ok": True}))
    log = again.logs[(1, "ANALYZE")]
    assert (log.ended, log.uncompensated) == ("ABORT_PHASE", ["k1"])
    assert again.fold(_rec(6, RecordType.COMPENSATED, key="nope", result={})) is None  # no such side effect
