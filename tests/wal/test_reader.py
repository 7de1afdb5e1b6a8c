"""Verification on real files: torn tails vs mid-log corruption, for every kind of damage."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from helpers.wal import MakeWal, damage, flip, segments
from hypothesis import given, settings
from hypothesis import strategies as st

from haios.errors import WalCorruptError
from haios.wal import format as fmt
from haios.wal import read_records, repair, verify


def _bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_reader_roundtrip_payloads_and_positions(make_wal: MakeWal) -> None:
    directory, records = make_wal(30)
    assert [r.lamport for r in records] == list(range(1, 31))
    assert records[0].offset == fmt.SEGMENT_HEADER_SIZE
    assert records[3].payload["name"] == "step-3"
    report = verify(directory)
    assert report.ok and report.records == 30 and (report.first_lamport, report.last_lamport) == (1, 30)


def test_reader_truncation_at_every_byte_of_the_last_two_records(make_wal: MakeWal, tmp_path: Path) -> None:
    directory, records = make_wal(12)
    seg = segments(directory)[0]
    original = seg.read_bytes()
    start = records[-2].offset
    for cut in range(start, len(original)):
        seg.write_bytes(original[:cut])
        report = verify(directory)
        kept = 10 if cut < records[-1].offset else 11
        if cut in (records[-2].offset, records[-1].offset):
            assert report.ok and report.records == kept
            continue
        assert report.corruption is not None and report.corruption.torn_tail, (cut, report.corruption)
        assert report.records == kept
        result = repair(directory)
        assert result.action == "truncated" and result.kept_records == kept
        after = verify(directory)
        assert after.ok and after.records == kept
        assert seg.read_bytes() == original[: records[kept].offset]
        assert (seg.parent / (seg.name + ".broken")).read_bytes() == original[records[kept].offset : cut]
        for broken in directory.glob("*.broken*"):
            broken.unlink()


def test_reader_zeroed_sector_at_the_tail_is_torn(make_wal: MakeWal) -> None:
    directory, records = make_wal(40, blob=200)
    seg = segments(directory)[0]
    data = bytearray(seg.read_bytes())
    sector = (records[-3].offset // 512 + 1) * 512  # an aligned sector inside the last records
    data[sector : sector + 512] = bytes(512)
    del data[sector + 512 :]
    seg.write_bytes(bytes(data))
    c = verify(directory).corruption
    assert c is not None and c.torn_tail and f"all-zero sector at offset {sector}" in c.reason


@pytest.mark.parametrize("shift", [0, 100])
def test_reader_zeroed_sector_mid_log_is_refused(make_wal: MakeWal, shift: int) -> None:
    directory, records = make_wal(60, blob=200)
    seg = segments(directory)[0]
    data = bytearray(seg.read_bytes())
    start = 1024 + shift  # aligned (shift 0) or straddling two sectors (shift 100)
    data[start : start + 512] = bytes(512)
    seg.write_bytes(bytes(data))
    c = verify(directory).corruption
    assert c is not None and not c.torn_tail
    bad = max(r.offset for r in records if r.offset <= start)
    assert c.offset == bad


def test_reader_zeros_then_garbage_at_the_tail_is_torn(make_wal: MakeWal) -> None:
    directory, _ = make_wal(10)
    seg = segments(directory)[0]
    with open(seg, "ab") as fh:
        fh.write(bytes(700) + os.urandom(300))
    c = verify(directory).corruption
    assert c is not None and c.torn_tail


def test_reader_random_garbage_appended_is_torn(make_wal: MakeWal) -> None:
    directory, records = make_wal(10)
    seg = segments(directory)[0]
    size = seg.stat().st_size
    with open(seg, "ab") as fh:
        fh.write(os.urandom(5000))
    c = verify(directory).corruption
    assert c is not None and c.torn_tail and c.offset == size and c.lamport == 11
    assert repair(directory).action == "truncated" and verify(directory).records == len(records)


def test_reader_stale_record_from_another_segment(make_wal: MakeWal) -> None:
    other, other_records = make_wal(5, name="other")
    directory, records = make_wal(10)
    seg = segments(directory)[0]
    stale = segments(other)[0].read_bytes()[other_records[0].offset : other_records[1].offset]
    with open(seg, "ab") as fh:  # at the tail: a torn tail (its CRC is fine, its salt is not)
        fh.write(stale)
    c = verify(directory).corruption
    assert c is not None and c.torn_tail and c.reason.startswith("salt mismatch")
    # in the middle (a stale record overwriting a live one of the same size): mid-log
    data = bytearray(seg.read_bytes()[: -len(stale)])
    data[records[4].offset : records[4].offset + len(stale)] = stale
    seg.write_bytes(bytes(data))
    c = verify(directory).corruption
    assert c is not None and not c.torn_tail and c.offset == records[4].offset


def test_reader_bit_flips_in_every_header_field_and_payload_are_mid_log(make_wal: MakeWal) -> None:
    directory, records = make_wal(20)
    seg = segments(directory)[0]
    original = seg.read_bytes()
    target = records[9]
    payload_end = records[10].offset
    for position in [*range(target.offset, target.offset + fmt.RECORD_HEADER_SIZE), (target.offset + payload_end) // 2]:
        for mask in (0x01, 0x80):
            flip(seg, position, mask)
            c = verify(directory).corruption
            assert c is not None, position
            assert not c.torn_tail and c.offset == target.offset, (position, mask, c)
            with pytest.raises(WalCorruptError):
                list(read_records(directory))
            seg.write_bytes(original)


def test_reader_length_claiming_4gib_is_rejected_without_allocating(make_wal: MakeWal) -> None:
    import tracemalloc

    directory, records = make_wal(10)
    seg = segments(directory)[0]
    data = bytearray(seg.read_bytes())
    struct.pack_into("<I", data, records[5].offset + 4, 0xFFFFFFFF)
    seg.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        c = verify(directory).corruption
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert c is not None and c.reason.startswith("length 4294967295 exceeds the maximum") and not c.torn_tail
    assert peak < 3 * fmt.MAX_PAYLOAD // 4  # nowhere near 4 GiB


def _rewrite(directory: Path, drop: int) -> None:
    """Delete record ``drop`` (0-based) and recompute every later record's CRC over its own bytes."""
    seg = segments(directory)[0]
    data = seg.read_bytes()
    records = list(read_records(directory))
    out = bytearray(data[: records[drop].offset])
    for r in records[drop + 1 :]:
        length = struct.unpack_from("<I", data, r.offset + 4)[0]
        rec = bytearray(data[r.offset : r.offset + fmt.RECORD_HEADER_SIZE + length])
        struct.pack_into("<I", rec, 0, zlib.crc32(bytes(rec[4:])))
        out += rec
    seg.write_bytes(bytes(out))


def test_reader_deleted_record_with_recomputed_crcs_is_caught(make_wal: MakeWal) -> None:
    directory, records = make_wal(10)
    _rewrite(directory, 4)
    c = verify(directory).corruption
    assert c is not None and not c.torn_tail
    assert c.offset == records[4].offset and "Lamport index 6, expected 5" in c.reason


def test_reader_deleted_last_but_one_record_is_not_a_torn_tail(make_wal: MakeWal) -> None:
    directory, _ = make_wal(10)
    _rewrite(directory, 8)
    c = verify(directory).corruption
    assert c is not None and not c.torn_tail  # the bad record's CRC is valid: never cut silently


def test_reader_missing_middle_segment(make_wal: MakeWal) -> None:
    directory, _ = make_wal(200, segment_size=4096)
    segs = segments(directory)
    assert len(segs) >= 4
    segs[2].unlink()
    c = verify(directory).corruption
    assert c is not None and not c.torn_tail and c.segment == segs[3].name and "missing" in c.reason


def test_reader_segment_from_another_wal(make_wal: MakeWal) -> None:
    directory, _ = make_wal(200, segment_size=4096)
    other, _ = make_wal(200, segment_size=4096, name="other")
    victim = segments(directory)[2]
    victim.write_bytes(segments(other)[2].read_bytes())
    c = verify(directory).corruption
    assert c is not None and not c.torn_tail and c.segment == victim.name


def test_reader_lz4_corrupt_payload_with_fixed_crc(make_wal: MakeWal) -> None:
    directory, records = make_wal(10, blob=500)
    target = records[5]
    assert target.flags & fmt.FLAG_LZ4
    seg = segments(directory)[0]
    data = bytearray(seg.read_bytes())
    length = struct.unpack_from("<I", data, target.offset + 4)[0]
    end = target.offset + fmt.RECORD_HEADER_SIZE + length
    start = target.offset + fmt.RECORD_HEADER_SIZE
    data[start] = 0xF0  # the first token now claims 15+ literal bytes, then a length run past the block
    struct.pack_into("<I", data, target.offset, zlib.crc32(bytes(data[target.offset + 4 : end])))
    seg.write_bytes(bytes(data))
    c = verify(directory).corruption
    assert c is not None and not c.torn_tail and c.offset == target.offset and c.reason.startswith("payload:")


def test_reader_bad_segment_header(make_wal: MakeWal) -> None:
    directory, _ = make_wal(10)
    flip(segments(directory)[0], 20)
    c = verify(directory).corruption
    assert c is not None and c.offset == 0 and "segment header CRC mismatch" in c.reason and not c.torn_tail


def test_reader_from_lamport_and_cursor(make_wal: MakeWal) -> None:
    from haios.wal import WalReader

    directory, _ = make_wal(300, segment_size=4096)
    assert [r.lamport for r in read_records(directory, from_lamport=250)] == list(range(250, 301))
    reader = WalReader(directory)
    first = [r.lamport for _, r in zip(range(100), reader, strict=False)]
    assert first == list(range(1, 101))
    tail = list(WalReader(directory, cursor=reader.cursor))
    assert [r.lamport for r in tail] == list(range(101, 301))


def test_reader_node_root_accepted(make_wal: MakeWal, tmp_path: Path) -> None:
    directory, _ = make_wal(5, name="node/wal")
    assert verify(tmp_path / "node").records == 5


def test_reader_empty_directory_is_clean(tmp_path: Path) -> None:
    report = verify(tmp_path)
    assert report.ok and report.records == 0 and report.last_lamport is None


def _segment_with(payload_records: list[bytes]) -> bytes:
    header = fmt.SegmentHeader(0, 1, 7, 0xABCD, 0, 0).encode()
    out, crc = bytearray(header), 0
    for i, stored in enumerate(payload_records, start=1):
        rec, crc = fmt.encode_record(fmt.RecordType.STEP, stored, len(stored), 0, 0xABCD, i, crc)
        out += rec
    return bytes(out)


def test_reader_empty_payload_record(tmp_path: Path) -> None:
    (tmp_path / fmt.segment_name(0, 1)).write_bytes(_segment_with([b"", b'{"a":1}']))
    records = list(read_records(tmp_path))
    assert [r.payload for r in records] == [{}, {"a": 1}]


@settings(max_examples=200)
@given(data=st.binary(max_size=3000))
def test_property_any_bytes_as_a_segment_give_a_verdict(tmp_path: Path, data: bytes) -> None:
    seg = tmp_path / fmt.segment_name(0, 1)
    seg.write_bytes(data)
    report = verify(tmp_path)
    assert report.ok or report.corruption is not None


@settings(max_examples=200)
@given(tail=st.binary(max_size=3000))
def test_property_any_bytes_after_a_valid_header_give_a_verdict(tmp_path: Path, tail: bytes) -> None:
    seg = tmp_path / fmt.segment_name(0, 1)
    seg.write_bytes(_segment_with([b'{"x":1}']) + tail)
    report = verify(tmp_path)
    assert report.records >= 1 and (report.ok or report.corruption is not None)


@pytest.mark.parametrize("damage", ["none", "flip", "torn", "missing", "foreign", "header", "garbage-tail"])
def test_reader_parallel_verify_gives_the_same_verdict(
    make_wal: MakeWal, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    from haios.wal import reader as reader_module

    directory, records = make_wal(400, segment_size=4096)
    segs = segments(directory)
    if damage == "flip":
        flip(segs[3], 200)
    elif damage == "torn":
        with open(segs[-1], "r+b") as fh:
            fh.truncate(segs[-1].stat().st_size - 5)
    elif damage == "missing":
        segs[4].unlink()
    elif damage == "foreign":
        other, _ = make_wal(400, segment_size=4096, name="other")
        segs[2].write_bytes(segments(other)[2].read_bytes())
    elif damage == "header":
        flip(segs[5], 3)
    elif damage == "garbage-tail":
        with open(segs[-1], "ab") as fh:
            fh.write(os.urandom(333))
    inline = verify(directory)
    monkeypatch.setattr(reader_module, "PARALLEL_MIN_BYTES", 0)
    parallel = verify(directory, jobs=3)
    assert parallel == inline
    assert (inline.corruption is None) == (damage == "none")


@settings(max_examples=60)
@given(
    action=st.sampled_from(["flip", "truncate", "zero", "append"]),
    where=st.floats(min_value=0.0, max_value=1.0),
    size=st.integers(min_value=1, max_value=700),
    mask=st.integers(min_value=1, max_value=255),
)
def test_property_fast_verify_and_reading_agree(
    make_wal: MakeWal, action: str, where: float, size: int, mask: int
) -> None:
    directory, _ = make_wal(60, segment_size=2048)
    damage(directory, action, where, size, mask)
    report = verify(directory)
    try:
        count = sum(1 for _ in read_records(directory))
    except WalCorruptError as exc:
        assert report.corruption == exc.corruption
    else:
        assert report.ok and report.records == count
    for path in directory.iterdir():
        if path.name.endswith(".wal"):
            path.unlink()
