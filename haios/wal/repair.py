"""``haios wal repair``: cut a torn tail, or (with force) keep the longest valid prefix (SPEC §2.3).

The cut bytes are kept in ``<segment>.broken`` (and whole later segments renamed to
``<segment>.broken``) before anything is truncated, and every step is fsynced, so a repair that is
itself interrupted can simply be run again: it is idempotent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Corruption, RepairRefused
from ..fsutil import atomic_write, fsync_dir
from .format import RECORD_HEADER, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, decode_segment_header
from .reader import _File, _valid_record_at, list_segments, verify, wal_dir


@dataclass
class RepairReport:
    directory: Path
    action: str  # "none" | "truncated" | "forced"
    corruption: Corruption | None = None
    kept_records: int = 0
    dropped_records: int = 0
    dropped_bytes: int = 0
    broken_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.action == "none":
            return f"{self.directory}: WAL is clean ({self.kept_records} records); nothing to repair"
        assert self.corruption is not None
        c = self.corruption
        what = "torn tail cut" if self.action == "truncated" else "mid-log corruption cut (--force)"
        dropped = f"; dropped {self.dropped_records} records that still verified" if self.action == "forced" else ""
        return (
            f"{self.directory}: {what} at segment {c.segment} offset {c.offset}: kept {self.kept_records} records, "
            f"moved {self.dropped_bytes} bytes to {', '.join(self.broken_files)}{dropped}"
        )


def _count_valid_records(path: Path, start: int) -> int:
    """How many records with the segment's salt still verify (by CRC) at or after ``start``."""
    f = _File(path)
    try:
        try:
            salt = decode_segment_header(bytes(f.get(0, SEGMENT_HEADER_SIZE))).salt
        except ValueError:
            return 0
        count, pos = 0, max(start, SEGMENT_HEADER_SIZE)
        while pos + RECORD_HEADER_SIZE <= f.size:
            if _valid_record_at(f, pos, salt):
                count += 1
                pos += RECORD_HEADER_SIZE + RECORD_HEADER.unpack(f.get(pos, RECORD_HEADER_SIZE))[1]
            else:
                pos += 1
        return count
    finally:
        f.close()


def _broken_name(segment: Path, data: bytes) -> Path:
    """``<segment>.broken``, or ``.broken.N`` when an earlier repair left different bytes there."""
    candidate = segment.with_name(segment.name + ".broken")
    n = 1
    while candidate.exists() and candidate.read_bytes() != data:
        candidate = segment.with_name(f"{segment.name}.broken.{n}")
        n += 1
    return candidate


def _cut(segment: Path, offset: int) -> tuple[int, str]:
    """Keep bytes [offset, end) of ``segment`` in a .broken file, then truncate it to ``offset``."""
    with open(segment, "rb") as fh:
        fh.seek(offset)
        tail = fh.read()
    broken = _broken_name(segment, tail)
    if not broken.exists():
        atomic_write(broken, tail)
    fd = os.open(segment, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.truncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(segment.parent)
    return len(tail), broken.name


def repair(directory: Path | str, *, force: bool = False) -> RepairReport:
    """Repair the WAL in ``directory``; see the module docstring."""
    path = wal_dir(directory)
    report = verify(path)
    if report.ok:
        return RepairReport(path, "none", kept_records=report.records)
    c = report.corruption
    assert c is not None
    if not c.torn_tail and not force:
        raise RepairRefused(
            f"{path}: refusing to repair {c.describe()}",
            hint=f"records after it would be lost; restore from a replica, or 'haios wal repair --force {path}'",
        )
    segments = list_segments(path)
    bad = next(s for s in segments if s.name == c.segment)
    result = RepairReport(path, "truncated" if c.torn_tail else "forced", c, kept_records=report.records)
    if not c.torn_tail:
        result.dropped_records = _count_valid_records(bad.path, c.offset + 1 if c.offset else 0)
    cut_at = max(c.offset, SEGMENT_HEADER_SIZE) if c.offset else 0
    for later in reversed([s for s in segments if s.seq > bad.seq]):
        # Later segments go first (newest first), so a crash leaves a WAL that still ends cleanly.
        result.dropped_records += _count_valid_records(later.path, 0)
        result.dropped_bytes += later.path.stat().st_size
        target = _broken_name(later.path, b"")
        os.rename(later.path, target)
        fsync_dir(path)
        result.broken_files.append(target.name)
    if cut_at == 0:
        # The segment header itself is bad: the whole segment goes.
        result.dropped_bytes += bad.path.stat().st_size
        target = _broken_name(bad.path, b"")
        os.rename(bad.path, target)
        fsync_dir(path)
        result.broken_files.insert(0, target.name)
    else:
        size, name = _cut(bad.path, cut_at)
        result.dropped_bytes += size
        result.broken_files.insert(0, name)
    return result
