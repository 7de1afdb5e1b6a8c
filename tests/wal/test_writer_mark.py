"""The writer's mark: where the last writer left the WAL, so the next open verifies only what came
after it, and anything that does not check out is ignored (the whole last segment is verified)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers.wal import flip, segments

from haios.errors import WalCorruptError
from haios.wal import RecordType, Wal, read_records, verify
from haios.wal import writer as writer_module
from haios.wal.writer import MARK_MAGIC, MARK_NAME

STEP = {"name": "s", "outcome": "ok"}


def _write(directory: Path, count: int, **kwargs: Any) -> None:
    with Wal.open(directory, **kwargs) as wal:
        for _ in range(count):
            wal.append(RecordType.STEP, STEP, durable=False)


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """Where each reader the writer builds starts: None from a segment's top, else the cursor's offset."""
    seen: list[int | None] = []
    real = writer_module.WalReader

    def reader(*args: Any, **kwargs: Any) -> Any:
        cursor = kwargs.get("cursor")
        seen.append(None if cursor is None else cursor.offset)
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "WalReader", reader)
    return seen


def _mark_fields(directory: Path) -> list[str]:
    text = (directory / MARK_NAME).read_text().strip().rpartition(" ")[0]
    return text.removeprefix(MARK_MAGIC + " ").split(" ")


def _forge(directory: Path, **changes: int) -> None:
    """Rewrite the mark with other values and a matching self-check (a mark that reads well)."""
    names = ["segment", "offset", "last_start", "lamport", "crc", "prefix_crc32"]
    fields = dict(zip(names, _mark_fields(directory), strict=True))
    fields.update({k: str(v) for k, v in changes.items()})
    text = " ".join([MARK_MAGIC, *fields.values()])
    (directory / MARK_NAME).write_text(f"{text} {zlib.crc32(text.encode())}\n")


def test_reopening_verifies_only_what_follows_the_mark(tmp_path: Path, starts: list[int | None]) -> None:
    _write(tmp_path, 50)
    size = segments(tmp_path)[-1].stat().st_size
    assert int(_mark_fields(tmp_path)[1]) == size
    _write(tmp_path, 5)
    assert starts == [size]  # the second open started where the first writer left off
    with Wal.open(tmp_path) as wal:
        assert wal.last_lamport == 55
    records = list(read_records(tmp_path))
    assert [r.lamport for r in records] == list(range(1, 56)) and verify(tmp_path).ok


def test_a_writer_that_appended_nothing_leaves_the_mark_as_it_was(tmp_path: Path) -> None:
    _write(tmp_path, 3)
    before = (tmp_path / MARK_NAME).read_bytes()
    Wal.open(tmp_path).close()
    assert (tmp_path / MARK_NAME).read_bytes() == before


def test_a_changed_byte_before_the_mark_is_still_found_on_open(tmp_path: Path, starts: list[int | None]) -> None:
    _write(tmp_path, 40)
    flip(segments(tmp_path)[-1], 200)
    with pytest.raises(WalCorruptError):
        Wal.open(tmp_path)
    assert starts == [None]  # the CRC-32 of the marked bytes no longer matches: read from the top


def test_a_torn_tail_after_the_mark_is_repaired_as_without_it(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    with open(segments(tmp_path)[-1], "ab") as fh:
        fh.write(b"\x01\x02torn")
    with Wal.open(tmp_path) as wal:
        assert wal.last_lamport == 10
        wal.append(RecordType.STEP, STEP)
    assert verify(tmp_path).ok and [r.lamport for r in read_records(tmp_path)] == list(range(1, 12))


@pytest.mark.parametrize(
    "forged",
    [
        {"lamport": 999},  # a chain state the record there does not have
        {"crc": 12345},
        {"offset": 10**9},  # beyond the segment
        {"last_start": 64},  # the first record, not the last
        {"prefix_crc32": 7},
    ],
)
def test_a_mark_that_does_not_check_out_is_ignored(
    tmp_path: Path, starts: list[int | None], forged: dict[str, int]
) -> None:
    _write(tmp_path, 20)
    _forge(tmp_path, **forged)
    with Wal.open(tmp_path) as wal:
        assert wal.last_lamport == 20
        wal.append(RecordType.STEP, STEP)
    assert starts == [None]
    assert verify(tmp_path).ok and [r.lamport for r in read_records(tmp_path)] == list(range(1, 22))


@pytest.mark.parametrize("body", [b"", b"garbage\n", b"\xff" * 600, b"haios-wal-verified 1 a b c d e f 0\n"])
def test_an_unreadable_mark_is_ignored(tmp_path: Path, starts: list[int | None], body: bytes) -> None:
    _write(tmp_path, 5)
    (tmp_path / MARK_NAME).write_bytes(body)
    with Wal.open(tmp_path) as wal:
        assert wal.last_lamport == 5
    assert starts == [None]


def test_a_mark_of_an_earlier_segment_is_ignored_after_rotation(tmp_path: Path, starts: list[int | None]) -> None:
    _write(tmp_path, 5, segment_size=4096)
    old = (tmp_path / MARK_NAME).read_bytes()
    _write(tmp_path, 200, segment_size=4096)
    assert len(segments(tmp_path)) > 1
    (tmp_path / MARK_NAME).write_bytes(old)  # the mark the first writer left, naming the first segment
    starts.clear()
    with Wal.open(tmp_path, segment_size=4096) as wal:
        assert wal.last_lamport == 205
        wal.append(RecordType.STEP, STEP)
    assert starts == [None]
    assert verify(tmp_path).ok
    assert _mark_fields(tmp_path)[0] == segments(tmp_path)[-1].name  # the new mark names the last one
