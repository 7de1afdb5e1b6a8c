"""The reader's fast loop (a chunk's whole, plainly good records at once) against reading one record
at a time: the same records, positions, cursor and counts, and on damage the same verdict."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.wal import MakeWal, damage, segments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haios.errors import WalCorruptError
from haios.wal import RecordType, Wal
from haios.wal import reader as reader_module
from haios.wal.reader import CHUNK, WalReader, whole_records


def _one_at_a_time(self: WalReader, *args: Any) -> Iterator[Any]:
    return iter(())


def _read(directory: Path, *, slow: bool, decode: bool = True, **kwargs: Any) -> dict[str, Any]:
    saved = WalReader._fast_records
    if slow:
        WalReader._fast_records = _one_at_a_time  # type: ignore[assignment,method-assign]
    try:
        reader = WalReader(directory, decode=decode, **kwargs)
        seen = []
        error = None
        try:
            for r in reader:
                try:
                    payload: Any = r.payload
                except ValueError as exc:  # not read by a reader that does not decode
                    payload = str(exc)
                seen.append((r.lamport, r.type, r.segment, r.offset, r.crc, r.flags, r.raw, payload))
        except WalCorruptError as exc:
            error = exc.corruption
        return {
            "records": seen,
            "error": error,
            "cursor": reader.cursor,
            "counted": (reader.records, reader.bytes_read, reader.first_lamport, reader.segments_read),
        }
    finally:
        WalReader._fast_records = saved  # type: ignore[method-assign]


def test_records_across_chunks_and_larger_than_a_chunk(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    sizes = [10, CHUNK // 3, 200, CHUNK + 5_000, 17, CHUNK // 2, CHUNK // 2, 3] * 2
    with Wal.open(directory, segment_size=3 * CHUNK) as wal:
        for i, size in enumerate(sizes):
            # random bytes as hex: lz4 cannot shrink them, so each record's stored size is about this
            wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": os.urandom(size // 2).hex()}, durable=False)
        wal.append(RecordType.STEP, {"name": "small", "outcome": "z" * 5000}, durable=False)  # lz4 shrinks it
    assert len(segments(directory)) > 1
    fast, slow = _read(directory, slow=False), _read(directory, slow=True)
    assert fast == slow
    assert [r[0] for r in fast["records"]] == list(range(1, len(sizes) + 2)) and fast["error"] is None
    assert any(r[5] for r in fast["records"])  # a compressed one among them
    assert _read(directory, slow=False, decode=False) == _read(directory, slow=True, decode=False)


def test_a_reader_stopped_midway_has_its_cursor_just_past_the_last_record_it_gave(make_wal: MakeWal) -> None:
    directory, records = make_wal(200)
    for stop in (1, 57, 199):
        reader = WalReader(directory)
        last = 0
        for n, record in enumerate(reader, 1):
            last = record.lamport
            if n == stop:
                break
        assert reader.cursor is not None and reader.cursor.lamport == stop == last
        assert reader.cursor.offset == records[stop].offset  # where the next record starts
        rest = [r.lamport for r in WalReader(directory, cursor=reader.cursor)]
        assert rest == list(range(stop + 1, 201))


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    action=st.sampled_from(["flip", "truncate", "zero", "append", "not-json", "none"]),
    where=st.floats(min_value=0.0, max_value=1.0),
    size=st.integers(min_value=1, max_value=700),
    mask=st.integers(min_value=1, max_value=255),
)
def test_property_fast_and_one_at_a_time_reading_agree(
    make_wal: MakeWal, action: str, where: float, size: int, mask: int
) -> None:
    directory, _ = make_wal(60, segment_size=2048)
    damage(directory, action, where, size, mask)
    if action == "not-json":  # a record whose framing is sound but whose payload is not a JSON object
        with Wal.open(directory) as wal:
            wal.append(RecordType.STEP, {"name": "x", "outcome": "ok"}, durable=False)
        last = segments(directory)[-1]
        body = bytearray(last.read_bytes())
        prefix = b'{"name":"x","outcome":"ok"'  # then the time the writer adds, and the closing brace
        tail = body.rfind(prefix)
        assert tail > 0
        end = body.index(b"}", tail) + 1
        payload = body[tail:end]
        body[tail:end] = b"[" + bytes(payload[1:-1]) + b"]"
        # the framing stays sound: the record's CRC recomputed over its header and new payload
        start = tail - reader_module.RECORD_HEADER_SIZE
        body[start : start + 4] = zlib.crc32(bytes(body[start + 4 : tail + len(payload)])).to_bytes(4, "little")
        last.write_bytes(bytes(body))
    for kwargs in ({}, {"partial_ok": True}):
        for decode in (True, False):
            fast = _read(directory, slow=False, decode=decode, **kwargs)
            slow = _read(directory, slow=True, decode=decode, **kwargs)
            assert fast == slow
            if action == "not-json" and decode:
                assert fast["error"] is not None and fast["error"].reason.startswith("payload: ")
            if action == "none":
                assert fast["error"] is None and len(fast["records"]) == 60
    for path in directory.iterdir():
        path.unlink()


@pytest.mark.parametrize("from_lamport", [None, 1, 30, 60, 61])
def test_from_lamport_gives_the_same_records(make_wal: MakeWal, from_lamport: int | None) -> None:
    directory, _ = make_wal(60, segment_size=2048)
    fast = _read(directory, slow=False, from_lamport=from_lamport)
    assert fast == _read(directory, slow=True, from_lamport=from_lamport)
    assert [r[0] for r in fast["records"]] == list(range(from_lamport or 1, 61))


def test_whole_records_ends_on_a_record_boundary_with_its_chain(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    with Wal.open(directory) as wal:
        for i, size in enumerate([300, 300, 10_000, 300, 300]):
            wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": os.urandom(size // 2).hex()}, durable=False)
    records = list(WalReader(directory))
    seg = segments(directory)[0]
    size = seg.stat().st_size
    # from the top: the segment header and the records that fit in the limit, the chain after them
    data, lamport, crc = whole_records(seg, 0, 0, 0, end=size, limit=900)
    assert len(data) == records[2].offset and (lamport, crc) == (2, records[1].crc)
    assert data == seg.read_bytes()[: len(data)]
    # a record larger than the limit comes whole
    data, lamport, crc = whole_records(seg, records[2].offset, 2, records[1].crc, end=size, limit=900)
    assert records[2].offset + len(data) == records[3].offset and lamport == 3
    # never past the end asked for
    data, lamport, crc = whole_records(seg, records[3].offset, 3, records[2].crc, end=records[4].offset, limit=1 << 20)
    assert records[3].offset + len(data) == records[4].offset and (lamport, crc) == (4, records[3].crc)
    # a record that claims more than is there: nothing to follow
    assert whole_records(seg, records[3].offset, 3, records[2].crc, end=records[4].offset - 1, limit=1 << 20)[0] == b""
