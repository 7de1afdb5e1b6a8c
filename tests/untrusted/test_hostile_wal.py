"""WAL records an attacker can write with valid CRCs: a decompression bomb, a payload nested
100,000 deep, a 400-digit integer, a length that lz4 cannot produce. Each is a verdict (corruption,
or a refused read naming the segment), never a crash or gigabytes of memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import lz4.block
import pytest

from haios.errors import InputError, WalCorruptError
from haios.wal import format as fmt
from haios.wal import read_records
from haios.wal.reader import MAX_INFLATION, WalReader

SALT = 0xABCD


def _segment(records: list[tuple[bytes, int, int]]) -> bytes:
    """A segment of STEP records given as (stored, raw_length, flags), chained and CRC'd correctly."""
    out, crc = bytearray(fmt.SegmentHeader(0, 1, 7, SALT, 0, 0).encode()), 0
    for lamport, (stored, raw_length, flags) in enumerate(records, start=1):
        rec, crc = fmt.encode_record(fmt.RecordType.STEP, stored, raw_length, flags, SALT, lamport, crc)
        out += rec
    return bytes(out)


def _write(directory: Path, records: list[tuple[bytes, int, int]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / fmt.segment_name(0, 1)).write_bytes(_segment(records))
    return directory


def _plain(payload: bytes) -> tuple[bytes, int, int]:
    return payload, len(payload), 0


def test_records_declaring_more_than_lz4_can_expand_are_corrupt(tmp_path: Path) -> None:
    tiny = lz4.block.compress(b"x" * 100, store_size=False)
    wal = _write(tmp_path / "wal", [(tiny, fmt.MAX_PAYLOAD, fmt.FLAG_LZ4)] * 50)
    with pytest.raises(WalCorruptError, match="more than lz4 can expand") as caught:
        list(read_records(wal))
    assert caught.value.corruption.lamport == 1 and not caught.value.corruption.torn_tail
    with pytest.raises(WalCorruptError, match="more than lz4 can expand"):  # the fast path stops at it too
        WalReader(wal, verify_only=True).drain()


def test_a_decompression_bomb_is_refused_with_bounded_memory_not_called_corruption(tmp_path: Path) -> None:
    raw = json.dumps({"name": "s", "outcome": "ok", "blob": "a" * (fmt.MAX_PAYLOAD - 64)}).encode()
    stored = lz4.block.compress(raw, store_size=False)  # 16 MiB from about 64 KiB: a real lz4 block
    count = MAX_INFLATION // len(raw) + 3
    wal = _write(tmp_path / "wal", [(stored, len(raw), fmt.FLAG_LZ4)] * count)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="decompression bomb") as caught:
            kept = list(read_records(wal))  # a consumer that keeps every record, the worst case
            del kept
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "0000000000000000-0000000000000001.wal" in str(caught.value)
    assert peak < 4 * MAX_INFLATION, peak  # what was kept (raw and parsed) up to the refusal, no more


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"g": ' + b"9" * 400 + b"}",
        b'{"g": ' + b"9" * 5000 + b"}",
        b'{"ts": NaN}',
        b'{"ts": 1e999}',
        b"[1, 2]",
        b"\xff\xfe",
    ],
    ids=["deep-object", "deep-list", "int-400", "int-5000", "nan", "inf", "not-object", "not-utf8"],
)
def test_payloads_no_haios_writer_makes_are_mid_log_corruption(tmp_path: Path, payload: bytes) -> None:
    wal = _write(tmp_path / "wal", [_plain(b'{"name":"a","outcome":"ok"}'), _plain(payload), _plain(b"{}")])
    with pytest.raises(WalCorruptError) as caught:
        list(read_records(wal))
    corruption = caught.value.corruption
    assert corruption.lamport == 2 and corruption.reason.startswith("payload:") and not corruption.torn_tail
