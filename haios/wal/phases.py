"""The one projection of a WAL onto its phases: which attempt of which (g, phase) each record speaks of.

A BEGIN_PHASE record starts an attempt at (g, phase) and becomes that pair's latest attempt. The
records of the attempt's body — INTENT, SIDE_EFFECT, SIDE_EFFECT_DONE, STEP, PREPARE and the end
record (COMMIT_PHASE or ABORT_PHASE) — count only while it is open. Recovery may speak of an attempt
while it is open, after it ended, and after the node began it again: a COMPENSATED record (written
with the attempt's own trace id, for one of its side effects) and a RECOVERY checkpoint count
whenever they come. A record whose trace id
names another attempt than the one it would fall to is not that attempt's.

The node (its transactions and recovery operations) and the reconciler's incremental observation
read the WAL through this one module, so both see the same attempts with the same side effects,
compensations and abandoned debts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .format import PHASES, RecordType
from .reader import Record

INTERNAL_STEP = "haios."  # the STEPs haios itself logs in a phase (not its command's)
COMMAND_STEP = "haios.command"  # the phase's command, and whether it may be run again after its last STEP
ABANDON_STEP = "abandon"  # RECOVERY step: side effects of an already aborted phase left uncompensated
OVERRIDE_STEP = "override"  # RECOVERY step: a signed override applied (its nonce is spent on this node for good)
CATCH_UP_PREFIX = "rejoin-"  # trace ids of the transitions a rejoining node commits to catch up

_BODY = frozenset(
    {
        RecordType.INTENT,
        RecordType.SIDE_EFFECT,
        RecordType.SIDE_EFFECT_DONE,
        RecordType.STEP,
        RecordType.PREPARE,
        RecordType.COMMIT_PHASE,
        RecordType.ABORT_PHASE,
    }
)
_ENDS = (RecordType.COMMIT_PHASE, RecordType.ABORT_PHASE)


@dataclass
class PhaseLog:
    """What the WAL holds of one attempt at (g, phase), from its BEGIN_PHASE on."""

    g: int
    phase: str
    trace_id: str
    snapshot: str
    participants: list[str]
    begin_lamport: int
    begin_ts: float = 0.0
    intents: list[dict[str, Any]] = field(default_factory=list)
    side_effects: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    prepared: str | None = None  # the PREPARE digest
    ended: str | None = None  # "COMMIT_PHASE" or "ABORT_PHASE"
    end_ts: float | None = None
    end_lamport: int | None = None
    compensated: dict[str, Any] = field(default_factory=dict)  # key -> result of the COMPENSATED record
    abandoned: list[str] = field(default_factory=list)  # keys a HARD_FAILED rollback gave up on
    recovery: list[dict[str, Any]] = field(default_factory=list)  # RECOVERY checkpoints, in order
    last_ts: float | None = None  # its latest BEGIN, SIDE_EFFECT, PREPARE or end record: its last sign of life

    @property
    def key(self) -> tuple[int, str]:
        return (self.g, self.phase)

    @property
    def uncompensated(self) -> list[str]:
        """The side effects it still owes: neither compensated nor given up on."""
        return [k for k in self.side_effects if k not in self.compensated and k not in self.abandoned]

    def lean(self) -> PhaseLog:
        """The attempt without the payloads (intents, side-effect parameters, results, checkpoints):
        what a reader that follows the WAL pass after pass keeps, all the projection needs to go on."""
        return replace(
            self,
            intents=[],
            side_effects={k: {} for k in self.side_effects},
            done={},
            steps={},
            compensated={k: None for k in self.compensated},
            recovery=[],
        )


_STRING_FIELDS = {
    RecordType.SIDE_EFFECT: "key",
    RecordType.SIDE_EFFECT_DONE: "key",
    RecordType.STEP: "name",
    RecordType.PREPARE: "digest",
    RecordType.COMPENSATED: "key",
}


def _strings(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def well_formed(kind: RecordType, p: dict[str, Any]) -> bool:
    """Whether what the projection reads of a record has the types haios writes: its g a count, its
    phase one of the five, its trace id, keys, names and digests strings, its participants and the
    keys it abandons lists of strings. Any other record (written by hand or by another program into
    a WAL that still verifies) speaks of no attempt."""
    g, phase = p.get("g"), p.get("phase")
    if type(g) is not int or g < 0 or phase not in PHASES or type(p.get("trace_id", "")) is not str:
        return False
    if kind is RecordType.BEGIN_PHASE:
        return type(p.get("snapshot")) is str and _strings(p.get("participants"))
    if kind in _ENDS:
        return p.get("abandoned") is None or _strings(p["abandoned"])
    field_name = _STRING_FIELDS.get(kind)
    return field_name is None or type(p.get(field_name)) is str


def _ts(payload: dict[str, Any]) -> float | None:
    ts: Any = payload.get("ts")
    kind = type(ts)  # JSON gives exactly int or float (a bool is neither)
    return float(ts) if kind is float or kind is int else None


class Phases:
    """The projection, fed one record at a time (:meth:`fold`); ``logs`` holds the latest attempt of
    every (g, phase) seen.

    ``begun_at``: the Lamport index of one attempt's BEGIN_PHASE. That attempt stays in ``logs`` even
    when its (g, phase) is begun again later (as a node does after an abort): recovery that
    compensates an attempt the node moved past reads it so.
    """

    def __init__(self, logs: Iterable[PhaseLog] = (), *, begun_at: int | None = None) -> None:
        self.logs: dict[tuple[int, str], PhaseLog] = {log.key: log for log in logs}
        self._begun_at = begun_at
        self._later: dict[tuple[int, str], PhaseLog] = {}  # attempts begun after the pinned one

    def fold(self, record: Record) -> PhaseLog | None:
        """Apply one record; returns the attempt it counted for (None: it speaks of no attempt known
        here, or came where it does not belong)."""
        p = record.payload
        if not well_formed(record.type, p):
            return None
        if record.type is RecordType.BEGIN_PHASE:
            return self._begin(record)
        owner = self._owner(record, (p["g"], p["phase"]))
        if owner is None:
            return None
        kind = record.type
        if kind is RecordType.INTENT:
            owner.intents.append(p)
        elif kind is RecordType.SIDE_EFFECT:
            owner.side_effects[p["key"]] = p
            owner.last_ts = _ts(p)
        elif kind is RecordType.SIDE_EFFECT_DONE:
            owner.done[p["key"]] = p["result"]
        elif kind is RecordType.STEP:
            owner.steps[p["name"]] = p["outcome"]
        elif kind is RecordType.PREPARE:
            owner.prepared = p["digest"]
            owner.last_ts = _ts(p)
        elif kind in _ENDS:
            owner.ended, owner.end_ts, owner.end_lamport = kind.name, _ts(p), record.lamport
            owner.abandoned = list(p.get("abandoned") or [])
            owner.last_ts = owner.end_ts
        elif kind is RecordType.COMPENSATED:
            owner.compensated[p["key"]] = p["result"]
        elif kind is RecordType.RECOVERY:
            owner.recovery.append(p)
            if p.get("step") == ABANDON_STEP:  # a HARD_FAILED trace gave up on an aborted attempt's debts
                outcome = p.get("outcome")
                more = outcome.get("abandoned") if type(outcome) is dict else None
                more = more if type(more) is list else []
                owner.abandoned += [k for k in more if isinstance(k, str) and k not in owner.abandoned]
        return owner

    def _begin(self, record: Record) -> PhaseLog:
        p = record.payload
        ts = _ts(p)
        log = PhaseLog(
            p["g"],
            p["phase"],
            p.get("trace_id", ""),
            p["snapshot"],
            list(p["participants"]),
            record.lamport,
            begin_ts=ts or 0.0,
            last_ts=ts,
        )
        pinned = self.logs.get(log.key)
        if pinned is not None and pinned.begin_lamport == self._begun_at:
            self._later[log.key] = log
        else:
            self.logs[log.key] = log
        return log

    def _owner(self, record: Record, key: tuple[Any, Any]) -> PhaseLog | None:
        """The attempt a record that is not a BEGIN_PHASE counts for."""
        only = self.logs.get(key)
        if not self._later:  # one attempt at most: the rules below, for a list of one
            if only is None:
                return None
            if record.type in _BODY:
                return only if only.ended is None else None
            if record.type is RecordType.COMPENSATED:
                p = record.payload
                return only if p["key"] in only.side_effects and only.trace_id == p.get("trace_id") else None
            return only if record.type is RecordType.RECOVERY else None
        attempts = [a for a in (only, self._later.get(key)) if a is not None]
        trace = record.payload.get("trace_id")
        if record.type in _BODY:
            fits = [a for a in attempts if a.ended is None]
        elif record.type is RecordType.COMPENSATED:
            fits = [a for a in attempts if record.payload["key"] in a.side_effects]  # before or after its end
        elif record.type is RecordType.RECOVERY:
            return attempts[0] if attempts else None  # checkpoints carry the recovery trace's id, not the attempt's
        else:
            return None
        same = [a for a in fits if a.trace_id == trace]
        if record.type is RecordType.COMPENSATED:
            return same[0] if same else None  # written with the attempt's own trace id, always
        return same[-1] if same else (fits[-1] if fits else None)


def scan(records: Iterable[Record], *, begun_at: int | None = None) -> dict[tuple[int, str], PhaseLog]:
    """The latest attempt of every (g, phase) in ``records`` (with ``begun_at``, the attempt begun
    there instead of any later one of its (g, phase))."""
    phases = Phases(begun_at=begun_at)
    for record in records:
        phases.fold(record)
    return phases.logs
