"""A WAL's summary: the phase projection of every record, where the records end, and what only a
watcher counts (I/O, phase durations, override nonces spent), folded in incrementally.

Two readers keep one. The reconciler keeps its own per node (``status/observed/<node>.json``) so a
second pass reads only new bytes. The WAL's writer keeps one in the WAL directory
(:data:`SUMMARY_NAME`), brought up to date each time it closes with the records appended since, so
a reconciler that has none of its own — its first pass over a node — can start from the node's
instead of folding every record again (:func:`adopt`).

A node's summary is a claim about bytes, and is taken only when those bytes are still the ones it
speaks of: it names the CRC-32 of every segment up to its cursor (of the cursor's segment up to the
cursor) and the record that ends at the cursor; :func:`adopt` reads the segments at checksum speed
and checks each, and that record (:func:`~haios.wal.reader.cursor_holds`). A bit flipped anywhere
below the cursor, a segment cut, rewritten or copied from another node, a summary from another
version of haios, or one that does not parse into exactly the shape written here is not adopted:
the reader folds the whole WAL, as without it. Like the writer's mark, it is a hint, never a
finding.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ..errors import HaiosError, SegmentHeaderError, WalCorruptError
from ..fsutil import atomic_write
from ..untrusted import load_json, read_regular
from .format import PHASES, SEGMENT_HEADER_SIZE, RecordType, decode_segment_header
from .phases import CATCH_UP_PREFIX, OVERRIDE_STEP, PhaseLog, Phases
from .reader import Cursor, Record, Segment, WalReader, crc32_of, cursor_holds, list_segments

log = logging.getLogger("haios.wal")

SUMMARY_NAME = ".summary.json"
STATE_VERSION = 7  # 7: the CRC-32 of each segment read (a node's own summary, checked by a reconciler)
KEEP_COMPLETED = 20  # completed phase summaries kept (open ones, and aborted ones still owing, always)
DURATION_WINDOW = 100  # completed durations kept per phase
SUMMARISED = frozenset(
    {
        RecordType.BEGIN_PHASE,
        RecordType.SIDE_EFFECT,
        RecordType.PREPARE,
        RecordType.COMMIT_PHASE,
        RecordType.ABORT_PHASE,
        RecordType.COMPENSATED,
        RecordType.RECOVERY,  # rare; only the abandon step of a HARD_FAILED trace matters here
    }
)
IO_KEYS = ("wal_bytes", "snapshot_bytes", "data_bytes")
BACKLOG_PER_CLOSE = 256 * 1024
"""How many bytes of records its writer did not append itself a close folds into the WAL's summary,
at most: a WAL written before there were summaries (or whose summary was lost) is summarised
256 KiB more at each close — under 10 ms of the node's — not all at once (a reconcile that rolls
forward nodes whose WALs have none pays it in their closes: 1 MiB added 3.4 s to a 16.5 s run at
200 nodes, this 0.8 s)."""


def empty() -> dict[str, Any]:
    """The summary of a WAL with no record read yet."""
    return {
        "version": STATE_VERSION,
        "cursor": None,
        "phases": [],
        "durations": {},
        "last_lamport": 0,
        "records": 0,
        "io": dict.fromkeys(IO_KEYS, 0),
    }


# -- checking a summary read back --------------------------------------------------------------------

_NUMBER = frozenset((int, float))


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    return type(value) in _NUMBER and math.isfinite(value)  # type: ignore[arg-type]


def _numbers(values: list[Any]) -> bool:
    """Every item a finite int or float (not a bool): :func:`_is_number` over a window of thousands of
    durations, in C."""
    return set(map(type, values)) <= _NUMBER and all(map(math.isfinite, values))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _keys_to(value: object, what: object) -> bool:
    """A mapping of strings to ``what`` (the lean attempt's stand-in for a payload)."""
    return isinstance(value, dict) and all(isinstance(k, str) and v == what for k, v in value.items())


def _optional(value: object, test: Any) -> bool:
    return value is None or bool(test(value))


_LOG_FIELDS = frozenset(f.name for f in fields(PhaseLog))
_LOG_CHECKS: dict[str, Any] = {
    "g": lambda v: _is_int(v) and v >= 0,
    "phase": lambda v: v in PHASES,  # as the projection takes them (wal.phases.well_formed)
    "trace_id": lambda v: isinstance(v, str),
    "snapshot": lambda v: isinstance(v, str),
    "participants": _strings,
    "begin_lamport": _is_int,
    "begin_ts": _is_number,
    "intents": lambda v: v == [],
    "side_effects": lambda v: _keys_to(v, {}),
    "done": lambda v: v == {},
    "steps": lambda v: v == {},
    "prepared": lambda v: _optional(v, lambda x: isinstance(x, str)),
    "ended": lambda v: v in (None, "COMMIT_PHASE", "ABORT_PHASE"),
    "end_ts": lambda v: _optional(v, _is_number),
    "end_lamport": lambda v: _optional(v, _is_int),
    "compensated": lambda v: _keys_to(v, None),
    "abandoned": _strings,
    "recovery": lambda v: v == [],
    "last_ts": lambda v: _optional(v, _is_number),
}


def kept_logs(data: list[dict[str, Any]]) -> list[PhaseLog]:
    """The attempts of a summary this process built or already checked (:func:`check`), unchecked."""
    return [PhaseLog(**item) for item in data]


def logs_from(data: object) -> list[PhaseLog]:
    """The attempts a summary kept (lean: keys, not payloads); ValueError when any is not exactly a
    lean attempt as :func:`fold_wal` writes it."""
    if not isinstance(data, list):
        raise ValueError("phases is not a list")
    out = []
    for item in data:
        if not isinstance(item, dict) or set(item) != _LOG_FIELDS:
            raise ValueError("a phase that is not an attempt")
        wrong = [name for name, test in _LOG_CHECKS.items() if not test(item[name])]
        if wrong:
            raise ValueError(f"a phase whose {', '.join(wrong)} is not as written")
        out.append(PhaseLog(**item))
    return out


def _pairs(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)
        for k, v in value.items()
    )


def check(data: object) -> dict[str, Any] | None:
    """``data`` when it is a summary of this version in the shape :func:`fold_wal` writes, every value
    of the type it must have (a summary read back may come from a crash, an older haios or another
    machine); None otherwise."""
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return None
    try:
        cursor = data["cursor"]
        if cursor is not None and not (isinstance(cursor, dict) and set(cursor) == {"seq", "offset", "lamport", "crc"}):
            return None
        if cursor is not None and not all(_is_int(v) for v in cursor.values()):
            return None
        logs_from(data["phases"])
        durations, io = data["durations"], data["io"]
        if not isinstance(durations, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and len(v) <= DURATION_WINDOW and _numbers(v)
            for k, v in durations.items()
        ):
            return None
        if not isinstance(io, dict) or set(io) != set(IO_KEYS) or not all(_is_int(v) for v in io.values()):
            return None
        if not _is_int(data["last_lamport"]) or not _is_int(data["records"]):
            return None
        if not all(_pairs(data.get(k) or {}) for k in ("segments", "crc32")):
            return None
        if not _optional(data.get("last_record"), _is_int) or not _strings(data.get("override_nonces") or []):
            return None
        mark = data.get("verified_to")
        if mark is not None and not (isinstance(mark, list) and len(mark) == 2 and all(_is_int(x) for x in mark)):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return data


# -- reading on from a summary ----------------------------------------------------------------------


def still_as_read(wal: Path, cursor: Cursor, state: dict[str, Any], listing: list[Segment] | None = None) -> bool:
    """Whether what an earlier pass read is still there as it was, by what is cheap to check on
    every pass: every segment up to the cursor's still has a valid header; those before it have the
    size and modification time they had when they were read; the cursor's segment still reaches
    the cursor, and the record just before it still carries the chain's last CRC. Anything else (a
    zeroed sector, a rewritten segment, a bit flip in the last record) sends the pass back to the
    start of the WAL, where the full read says what is wrong."""
    seen: dict[str, list[int]] = state.get("segments") or {}
    last_record = state.get("last_record")
    found = False
    for seg in list_segments(wal) if listing is None else listing:
        if seg.seq > cursor.seq:
            break
        try:
            info = seg.path.stat()
            with open(seg.path, "rb") as fh:
                head = fh.read(SEGMENT_HEADER_SIZE)
                decode_segment_header(head)
                if seg.seq < cursor.seq:
                    if seen.get(seg.name, [info.st_size, info.st_mtime_ns]) != [info.st_size, info.st_mtime_ns]:
                        return False
                    continue
                was = seen.get(seg.name)
                if was is not None and was[0] == info.st_size and was[1] != info.st_mtime_ns:
                    return False  # rewritten in place, nothing appended: what was read may have changed
                found = info.st_size >= cursor.offset
                if found and isinstance(last_record, int) and SEGMENT_HEADER_SIZE <= last_record < cursor.offset:
                    found = cursor_holds(wal, cursor, last_record)
        except (OSError, SegmentHeaderError, struct.error):
            return False
    return found


def _segments_read(listing: list[Segment], cursor: Cursor | None) -> dict[str, list[int]]:
    """Size and modification time of each segment read, up to the cursor's."""
    out = {}
    for seg in listing:
        if cursor is None or seg.seq > cursor.seq:
            break
        info = seg.path.stat()
        out[seg.name] = [info.st_size, info.st_mtime_ns]
    return out


def _checksums(listing: list[Segment], cursor: Cursor | None, known: dict[str, list[int]]) -> dict[str, list[int]]:
    """[length, CRC-32] of each segment up to the cursor's (that one up to the cursor), going on
    from the prefix ``known`` of a segment where there is one."""
    out: dict[str, list[int]] = {}
    for seg in listing:
        if cursor is None or seg.seq > cursor.seq:
            break
        end = cursor.offset if seg.seq == cursor.seq else seg.path.stat().st_size
        was = known.get(seg.name)
        if was is not None and was[0] == end:
            out[seg.name] = was  # a sealed segment, summed before: no need to open it
            continue
        prefix = (was[0], was[1]) if was is not None and was[0] < end else None
        out[seg.name] = [end, crc32_of(seg.path, end, prefix)]
    return out


def _count(value: object) -> int:
    """A byte count a record names: a non-negative integer, anything else none."""
    return value if type(value) is int and value >= 0 else 0


def fold_record(
    record: Record, phases: Phases, io: dict[str, int], durations: dict[str, list[float]], spent: list[str]
) -> None:
    """One WAL record into the phase projection, and into what only a watcher counts: the I/O
    counters, the phase durations and the override nonces spent on the node."""
    log = phases.fold(record)
    p = record.payload
    if record.type is RecordType.BEGIN_PHASE and log is not None:
        io["snapshot_bytes"] += _count(p.get("snapshot_bytes"))
    elif record.type is RecordType.PREPARE and log is not None:
        io["data_bytes"] += _count(p.get("data_bytes"))
    elif record.type is RecordType.RECOVERY:
        outcome = p.get("outcome")
        nonce = outcome.get("nonce") if p.get("step") == OVERRIDE_STEP and type(outcome) is dict else None
        if isinstance(nonce, str) and nonce not in spent:
            spent.append(nonce)  # an override applied here: spent for good, whatever status/ says
    elif (
        record.type is RecordType.COMMIT_PHASE
        and log is not None
        and log.end_ts is not None
        and not log.trace_id.startswith(CATCH_UP_PREFIX)  # a rejoining node's catch-up commits take no time
    ):
        window = durations.setdefault(log.phase, [])
        window.append(log.end_ts - log.begin_ts)
        del window[:-DURATION_WINDOW]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a WAL is folded, back on after (when it was on): the fold
    makes a container or more per record (the payload's dict, the attempt), none of them in a
    cycle, and the collections they would set off walk every object still held, again and again (an
    eighth of a fold of 100,000 records). Nested or in several threads at once: only whoever
    turned it off turns it on again."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def fold_wal(
    wal: Path, summary: dict[str, Any] | None, *, partial_ok: bool, checksums: bool = False, budget: int | None = None
) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """Fold the WAL's records after ``summary``'s cursor into it (every record when None, or when
    the WAL no longer continues from the cursor); returns (summary, bytes read, corruption: where
    the first bad record is, as :meth:`Corruption.as_dict`). ``partial_ok``: a short record at the
    very end is an append in progress (a writer holds the lock), not a torn tail. ``checksums``: keep
    the CRC-32 of each segment read (what :func:`adopt` checks). ``budget``: stop after the record
    that reaches that many bytes read (the summary then ends there, where the next fold goes on)."""
    state: dict[str, Any] = summary or empty()
    cursor = Cursor(**state["cursor"]) if state["cursor"] else None
    listing = list_segments(wal)
    if cursor is not None and not still_as_read(wal, cursor, state, listing):
        # the WAL the summary spoke of is gone, was cut below it (deleted, restored, repaired) or
        # changed where it was read before: summarise what is there now from the start
        return fold_wal(wal, None, partial_ok=partial_ok, checksums=checksums, budget=budget)
    reader = WalReader(wal, cursor=cursor, partial_ok=partial_ok, decode=False)
    phases: Phases | None = None  # the projection, built at the first record that counts for it
    io = state["io"]
    durations: dict[str, list[float]] = {k: list(v) for k, v in state["durations"].items()}
    corruption = None
    last_record = state.get("last_record")
    spent: list[str] = state.setdefault("override_nonces", [])
    try:
        with _collector_paused():
            for record in reader:
                last_record = record.offset
                if record.type not in SUMMARISED:
                    continue  # framing and CRC are verified; only these types need their payload read
                if phases is None:
                    phases = Phases(kept_logs(state["phases"]))
                fold_record(record, phases, io, durations, spent)
                if budget is not None and reader.bytes_read >= budget:
                    break
    except WalCorruptError as exc:
        corruption = exc.corruption.as_dict()
    if phases is not None:  # else what is kept stays as it was (a pass with nothing new, most of them)
        completed = sorted((s for s in phases.logs.values() if s.ended), key=lambda s: s.end_lamport or 0)
        recent = completed[-KEEP_COMPLETED:]
        # open phases, and aborted ones whose side effects still need compensating, are always kept
        kept = [s for s in phases.logs.values() if not s.ended]
        kept += [s for s in completed[:-KEEP_COMPLETED] if s.ended == "ABORT_PHASE" and s.uncompensated] + recent
        state["phases"] = [asdict(s.lean()) for s in kept]
    now = reader.cursor or cursor
    # the segments begun in this pass (the one a cursor resumes in was counted before)
    fresh = reader.segments_read - (1 if cursor is not None and reader.segments_read else 0)
    if fresh:
        listing = list_segments(wal)  # the reader went on into segments the listing may not have held
    state.update(
        segments=_segments_read(listing, now),
        last_record=last_record,  # where the record before the cursor starts (checked on the next pass)
        cursor=asdict(now) if now else None,
        durations=durations,
        last_lamport=reader.cursor.lamport if reader.cursor else state["last_lamport"],
        records=state["records"] + reader.records,
    )
    if checksums:
        state["crc32"] = _checksums(listing, now, state.get("crc32") or {})
    else:
        state.pop("crc32", None)
    # every byte of the WAL is read once: what was written (the reader counts records; add the header
    # of each segment begun in this pass)
    io["wal_bytes"] += reader.bytes_read + SEGMENT_HEADER_SIZE * fresh
    return state, reader.bytes_read, corruption


# -- the WAL's own summary ----------------------------------------------------------------------------


def _read_own(wal: Path) -> dict[str, Any] | None:
    try:
        data = read_regular(wal / SUMMARY_NAME, "json")
        return check(load_json(data, wal / SUMMARY_NAME)) if data is not None else None
    except HaiosError:
        return None


def refresh(wal: Path, appended: int) -> None:
    """Bring the WAL's own summary up to date (its writer calls it when it closes, holding the lock,
    having ``appended`` bytes): fold the records appended since it was written — from the start when
    there is none that still fits the WAL — at most ``appended`` + :data:`BACKLOG_PER_CLOSE` bytes of
    them (a summary that ends before the WAL does is one a reader goes on from). A summary that
    cannot be brought up to date is left as it was (it still speaks truly of the bytes it names,
    which is all a reader takes from it): only a hint, the next writer tries again."""
    try:
        budget = appended + BACKLOG_PER_CLOSE
        state, _read, _corruption = fold_wal(wal, _read_own(wal), partial_ok=False, checksums=True, budget=budget)
        state.pop("verified_to", None)
        atomic_write(wal / SUMMARY_NAME, json.dumps(state, sort_keys=True).encode(), durable=False)
    except Exception as exc:  # noqa: BLE001 - a hint: whatever goes wrong, the writer's close goes on
        log.debug("%s: could not bring the WAL summary up to date: %s", wal, exc)


def adopt(wal: Path) -> dict[str, Any] | None:
    """The WAL's own summary, for a reader that has none of its own, when the bytes it speaks of are
    still there: every segment up to its cursor, and none other below the cursor, has the CRC-32 the
    summary names (the cursor's segment up to the cursor) and the record before the cursor is the one
    it names. None when anything does not check out (the reader then folds the whole WAL)."""
    state = _read_own(wal)
    if state is None or state["cursor"] is None:
        return None
    cursor = Cursor(**state["cursor"])
    sums: dict[str, list[int]] = state.get("crc32") or {}
    segments = [seg for seg in list_segments(wal) if seg.seq <= cursor.seq]
    if not segments or segments[-1].seq != cursor.seq or {s.name for s in segments} - set(sums):
        return None
    last_record = state.get("last_record")
    try:
        for seg in segments:
            length, crc = sums[seg.name]
            if seg.seq < cursor.seq and seg.path.stat().st_size != length:
                return None
            if seg.seq == cursor.seq and length != cursor.offset:
                return None
            if crc32_of(seg.path, length) != crc:
                return None
        if not isinstance(last_record, int) or not cursor_holds(wal, cursor, last_record):
            return None
    except OSError:
        return None
    # the size and modification times it names are the writer's view; the reader takes its own
    state.pop("segments", None)
    state.pop("crc32", None)
    state.pop("verified_to", None)
    return state
