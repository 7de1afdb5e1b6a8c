"""Repair: torn tails cut, mid-log refused (or forced), idempotent and safe to crash in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.wal import MakeWal, flip, segments

from haios.errors import RepairRefused
from haios.wal import read_records, repair, verify


def test_repair_clean_wal_does_nothing(make_wal: MakeWal) -> None:
    directory, _ = make_wal(10)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    report = repair(directory)
    assert report.action == "none" and report.kept_records == 10
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_repair_refuses_mid_log_and_leaves_bytes_identical(make_wal: MakeWal) -> None:
    directory, records = make_wal(30)
    seg = segments(directory)[0]
    flip(seg, records[10].offset + 33)
    before = seg.read_bytes()
    with pytest.raises(RepairRefused, match=f"offset {records[10].offset}") as info:
        repair(directory)
    assert info.value.exit_code == 5
    assert seg.read_bytes() == before and not list(directory.glob("*.broken*"))


def test_repair_force_keeps_longest_valid_prefix_and_later_segments_go(make_wal: MakeWal) -> None:
    directory, records = make_wal(300, segment_size=4096)
    segs = segments(directory)
    target = next(r for r in records if r.segment == segs[1].name and r.offset > 500)
    flip(segs[1], target.offset + 40)
    report = repair(directory, force=True)
    assert report.action == "forced"
    assert report.kept_records == target.lamport - 1
    assert report.dropped_records == 300 - target.lamport  # every later record still verified
    assert [r.lamport for r in read_records(directory)] == list(range(1, target.lamport))
    assert [p.name for p in segments(directory)] == [s.name for s in segs[:2]]
    assert len(report.broken_files) == len(segs) - 1
    assert verify(directory).ok


def test_repair_is_idempotent(make_wal: MakeWal) -> None:
    directory, records = make_wal(10)
    seg = segments(directory)[0]
    with open(seg, "ab") as fh:
        fh.write(os.urandom(100))
    first = repair(directory)
    state = {p.name: p.read_bytes() for p in directory.iterdir()}
    second = repair(directory)
    assert first.action == "truncated" and second.action == "none"
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == state


def test_repair_crash_after_broken_file_before_truncate(make_wal: MakeWal) -> None:
    directory, records = make_wal(10)
    seg = segments(directory)[0]
    garbage = os.urandom(100)
    with open(seg, "ab") as fh:
        fh.write(garbage)
    # a repair that wrote the .broken copy and was killed before truncating
    (seg.parent / (seg.name + ".broken")).write_bytes(garbage)
    report = repair(directory)
    assert report.action == "truncated" and report.broken_files == [seg.name + ".broken"]
    assert verify(directory).records == 10
    assert sorted(p.name for p in directory.glob("*.broken*")) == [seg.name + ".broken"]


def test_repair_keeps_earlier_broken_files(make_wal: MakeWal) -> None:
    directory, _ = make_wal(10)
    seg = segments(directory)[0]
    (seg.parent / (seg.name + ".broken")).write_bytes(b"from an earlier repair")
    with open(seg, "ab") as fh:
        fh.write(b"\x00" * 64)
    report = repair(directory)
    assert report.broken_files == [seg.name + ".broken.1"]
    assert (seg.parent / (seg.name + ".broken")).read_bytes() == b"from an earlier repair"


def test_repair_bad_segment_header_forced(make_wal: MakeWal, tmp_path: Path) -> None:
    directory, _ = make_wal(300, segment_size=4096)
    segs = segments(directory)
    flip(segs[2], 10)
    with pytest.raises(RepairRefused):
        repair(directory)
    report = repair(directory, force=True)
    assert [p.name for p in segments(directory)] == [s.name for s in segs[:2]]
    assert verify(directory).ok and report.kept_records == verify(directory).records
