"""The record checks of a verify in C (haios/wal/_scan.c) give what the Python loop gives, record for
record, on any bytes: well-formed runs, lz4 records among them, and every kind of damage."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haios.wal import RecordType, Wal
from haios.wal import reader as wal_reader
from haios.wal.format import FLAG_JUMP, FLAG_LZ4, SEGMENT_HEADER_SIZE, decode_segment_header
from haios.wal.reader import _fast_scan, _scan, list_segments, verify

SALT = 0x5A17
U64 = 2**64 - 1


def _native_or_why() -> None:
    if wal_reader._native_scan is not None:
        return
    if shutil.which("cc") or shutil.which("gcc"):
        pytest.fail("a C compiler is here, but haios.wal._scan was not built: reinstall haios (make venv)")
    pytest.skip("no C compiler where haios was installed: verify runs its Python loop alone")


def _record(lamport: int, prev: int, kind: int, flags: int, body: bytes, reserved: int = 0) -> tuple[bytes, int]:
    raw_length = len(body)
    stored = lz4.block.compress(body, store_size=False) if flags & FLAG_LZ4 else body
    rest = struct.pack("<IBBHIQII", len(stored), kind, flags, reserved, SALT, lamport, prev, raw_length) + stored
    crc = zlib.crc32(rest)
    return struct.pack("<I", crc) + rest, crc


RECORD = st.tuples(
    st.sampled_from([1, 1, 1, 1, 2, 5, 0, 13, 1000]),  # the Lamport step (1 most often; 0 and backwards: bad)
    st.sampled_from([5, 5, 5, 1, 12, 0, 13, 255]),  # the type (0, 13, 255: unknown)
    st.sampled_from([0, 0, 0, FLAG_LZ4, FLAG_JUMP, FLAG_LZ4 | FLAG_JUMP, 4, 0x80]),
    st.sampled_from([b"", b"{}", b'{"name":"step-1","outcome":"ok"}', b"x" * 300]),
    st.sampled_from([0, 0, 0, 0, 0, 1]),  # reserved bytes
)


@settings(max_examples=600, deadline=None)
@given(
    specs=st.lists(RECORD, min_size=1, max_size=12),
    start=st.sampled_from([0, 7, U64 - 3, U64 - 1, U64]),
    flip=st.none() | st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=255)),
    cut=st.none() | st.integers(min_value=0, max_value=10_000),
)
def test_property_the_c_loop_and_the_python_loop_agree_on_any_bytes(
    specs: list[tuple[int, int, int, bytes, int]], start: int, flip: tuple[int, int] | None, cut: int | None
) -> None:
    _native_or_why()
    data, lamport, prev = bytearray(), start, 0xC0FFEE
    for step, kind, flags, body, reserved in specs:
        lamport = (lamport + step) % (U64 + 1)
        chunk, prev = _record(lamport, prev, kind, flags, body, reserved)
        data += chunk
    if flip is not None and data:
        data[flip[0] % len(data)] ^= flip[1]
    if cut is not None:
        del data[cut:]
    view = memoryview(bytes(data))
    assert _scan(view, SALT, start, 0xC0FFEE) == _fast_scan(view, SALT, start, 0xC0FFEE)
    assert wal_reader._native_scan is not None
    native = wal_reader._native_scan(view, SALT, start, 0xC0FFEE, wal_reader._TYPE_BITS, 3, FLAG_LZ4, FLAG_JUMP)
    assert native[0] <= _fast_scan(view, SALT, start, 0xC0FFEE)[0]  # it stops at an lz4 record, or before


def test_a_wal_of_plain_and_lz4_records_verifies_the_same_with_and_without_the_c_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _native_or_why()
    with Wal.open(tmp_path) as wal:
        for i in range(3000):
            body = {"name": f"step-{i}", "outcome": os.urandom(40).hex() if i % 3 else "ok " * 100}
            wal.append(RecordType.STEP, body, durable=False)
    seg = list_segments(tmp_path)[0].path
    with open(seg, "rb") as fh:
        header = decode_segment_header(fh.read(SEGMENT_HEADER_SIZE))
        view = memoryview(fh.read())
    assert _scan(view, header.salt, header.prev_lamport, header.prev_crc)[3] == 3000
    with_c = verify(tmp_path, jobs=1)
    monkeypatch.setattr(wal_reader, "_native_scan", None)
    assert verify(tmp_path, jobs=1) == with_c and with_c.ok and with_c.records == 3000
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    without_c = verify(tmp_path, jobs=1)
    monkeypatch.undo()
    assert verify(tmp_path, jobs=1) == without_c and not without_c.ok  # the same first bad record, named alike


def _first_bad(directory: Path) -> object:
    """The corruption a plain reader (no verify: no reads ahead, no C loop) meets first."""
    from haios.errors import WalCorruptError
    from haios.wal.reader import WalReader

    try:
        count = sum(1 for _ in WalReader(directory, decode=False))
    except WalCorruptError as exc:
        return exc.corruption
    return count


@pytest.mark.parametrize("flip_at", [None, 0.3, 0.77])
def test_reads_ahead_across_chunks_find_what_a_plain_reader_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flip_at: float | None
) -> None:
    monkeypatch.setattr(wal_reader, "CHUNK", 4096)  # records cross chunk ends all the time
    rng = __import__("random").Random(5)
    with Wal.open(tmp_path) as wal:
        for i in range(400):
            size = 20_000 if i == 200 else rng.randrange(10, 3000)  # one record larger than a chunk
            wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": os.urandom(size // 2).hex()}, durable=False)
    if flip_at is not None:
        seg = list_segments(tmp_path)[0].path
        data = bytearray(seg.read_bytes())
        data[int(len(data) * flip_at)] ^= 0x04
        seg.write_bytes(bytes(data))
    report = verify(tmp_path, jobs=1)
    expected = _first_bad(tmp_path)
    if flip_at is None:
        assert report.ok and report.records == expected == 400
    else:
        assert report.corruption == expected and report.corruption is not None
