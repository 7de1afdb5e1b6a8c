"""Reading and verifying a WAL in constant memory, over any number of segments.

Each record is checked in this order (SPEC §2.3): the length against the maximum and the bytes left
(before anything is allocated), the CRC, the salt, the Lamport index, the ``prev_crc`` link, and the
lz4 decoded length. The first failure stops the scan and is classified:

* **torn tail** — a *physical* failure (short record, length past the end, CRC or salt mismatch)
  in the last segment, with no valid record of that segment's salt anywhere after it: what a crash
  in the middle of an append leaves. ``repair`` truncates it.
* **mid-log corruption** — anything else, including a record whose CRC is valid but whose Lamport
  index or link is wrong (a deleted or reordered record), and any damage followed by valid records.
  Truncating would lose acknowledged records, so ``repair`` refuses it.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from ..errors import Corruption, InputError, SegmentHeaderError, VerificationError, WalCorruptError
from .format import (
    FLAG_JUMP,
    FLAG_LZ4,
    KNOWN_FLAGS,
    MAX_PAYLOAD,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SEGMENT_NAME,
    RecordType,
    SegmentHeader,
    decode_payload,
    decode_segment_header,
    lz4_bound,
    parse_json,
)

CHUNK = 1024 * 1024
MAX_INFLATION = 128 * 1024 * 1024
"""How many bytes beyond 16x their stored size the payloads of one read may decode to, in all: a WAL
of records that each claim 16 MiB from 64 KiB (a decompression bomb) must not take a reader, or a
caller that keeps what it reads, to gigabytes. haios's own JSON stays far from it."""
BOMB_RATIO = 16
SECTOR = 512
_TYPES = frozenset(int(t) for t in RecordType)
_TYPE_OF = {int(t): t for t in RecordType}


class _Payload:
    """A record's ``payload``: its JSON parsed on first use, then an ordinary attribute of the record
    (what ``functools.cached_property`` does, without the lock it takes on every first use)."""

    @overload
    def __get__(self, record: None, owner: type[Record]) -> _Payload: ...
    @overload
    def __get__(self, record: Record, owner: type[Record]) -> dict[str, Any]: ...
    def __get__(self, record: Record | None, owner: type[Record]) -> dict[str, Any] | _Payload:
        if record is None:
            return self
        value = parse_json(record.raw)
        record.__dict__["payload"] = value
        return value


@dataclass(frozen=True)
class Record:
    """One verified record."""

    lamport: int
    type: RecordType
    segment: str
    offset: int
    crc: int
    flags: int
    raw: bytes  # the JSON payload bytes

    payload = _Payload()  # the payload, parsed once (a reader that verifies payloads has parsed it already)


# the fast loop makes each Record without its frozen __init__ (which sets the fields one at a time
# through object.__setattr__): the instance's dict filled at once, as that __init__ would
_new_record = object.__new__


@dataclass(frozen=True)
class Segment:
    seq: int
    first_lamport: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Cursor:
    """Where a reader stopped: segment, byte offset and the chain state (last Lamport and CRC)."""

    seq: int
    offset: int
    lamport: int
    crc: int


def cursor_holds(wal: Path, cursor: Cursor, start: int) -> bool:
    """Whether the record that starts at ``start`` is still the one that ended at ``cursor``: its
    header carries the cursor's CRC and Lamport index, it ends exactly at the cursor, and its bytes
    still have that CRC. A repair may cut the record away and a later append end at the very same
    offset, and a bit may flip inside it: the size alone proves nothing. The one cursor check of
    haios (the node's state.txt cursor, the observation cache's)."""
    for path in wal.glob(f"{cursor.seq:016x}-*.wal"):
        if start < SEGMENT_HEADER_SIZE or start + RECORD_HEADER.size > cursor.offset:
            return False
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                record = fh.read(cursor.offset - start)
        except OSError:
            return False
        if len(record) != cursor.offset - start:
            return False
        crc, length, _t, _f, _r, _salt, lamport, _prev, _raw = RECORD_HEADER.unpack_from(record)
        ends = start + RECORD_HEADER.size + length
        return (crc, lamport, ends) == (cursor.crc, cursor.lamport, cursor.offset) and zlib.crc32(record[4:]) == crc
    return False


def crc32_of(path: Path, end: int, known: tuple[int, int] | None = None) -> int:
    """zlib.crc32 of the first ``end`` bytes of ``path`` (``known``: the CRC-32 of a shorter prefix,
    (length, crc32), from which to go on). OSError when the file is shorter."""
    start, crc32 = known if known is not None and known[0] <= end else (0, 0)
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            block = fh.read(min(left, 1 << 20))
            if not block:
                raise OSError(errno.EIO, f"{path}: shorter than {end} bytes")
            crc32 = zlib.crc32(block, crc32)
            left -= len(block)
    return crc32


def wal_dir(path: Path | str) -> Path:
    """``path`` itself, or ``path/wal`` when ``path`` is a node root."""
    p = Path(path)
    return p / "wal" if (p / "wal").is_dir() and not list_segments(p) else p


def list_segments(directory: Path) -> list[Segment]:
    """The segment files of the WAL in ``directory``, by sequence number."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = SEGMENT_NAME.fullmatch(name)
        if m:
            out.append(Segment(int(m.group(1), 16), int(m.group(2), 16), directory / name))
    return sorted(out, key=lambda s: s.seq)


def _header_problem(
    seg: Segment,
    header: SegmentHeader,
    prev: SegmentHeader | None,
    wal_id: int | None,
    prev_end: tuple[int, int] | None,
) -> str | None:
    """What is wrong with how a segment's header names itself and links to its predecessor, if anything."""
    if header.seq != seg.seq or header.first_lamport != seg.first_lamport:
        return "segment header does not match the file name"
    if prev is not None and header.seq != prev.seq + 1:
        return f"segment(s) missing before this one (sequence {prev.seq} is followed by {header.seq})"
    if wal_id is not None and header.wal_id != wal_id:
        return "segment belongs to another WAL (its WAL id differs)"
    if prev_end is not None and (header.prev_crc, header.prev_lamport) != prev_end:
        return "segment does not link to the end of its predecessor (prev_crc/prev_lamport)"
    return None


class _Bad(Exception):
    def __init__(self, offset: int, reason: str, physical: bool, lamport: int | None) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.physical = physical
        self.lamport = lamport


class _File:
    """Buffered random-ish access to a segment file in bounded memory. ``ahead``: read the next chunk
    in a thread of its own while the caller works on this one (a verify, whose checks run in C without
    the interpreter lock: the reading and the checking overlap)."""

    def __init__(self, path: Path, *, ahead: bool = False) -> None:
        self.fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        self.size = os.fstat(self.fh.fileno()).st_size
        self.base = 0
        self.buf = b""
        self._pool = ThreadPoolExecutor(1) if ahead else None
        self._ahead: tuple[int, Future[bytes]] | None = None  # the next chunk being read: its offset

    def get(self, offset: int, length: int) -> memoryview:
        end = offset + length
        if offset < self.base or end > self.base + len(self.buf):
            self._fill(offset, max(length, CHUNK))
        start = offset - self.base
        return memoryview(self.buf)[start : start + length]

    def _fill(self, offset: int, want: int) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and self.base <= offset <= ahead[0] == self.base + len(self.buf):
            nxt = ahead[1].result()
            buf = self.buf[offset - self.base :] + nxt  # what is left of this chunk, then the next
            if len(buf) >= want or len(nxt) < CHUNK:
                self.buf, self.base = buf, offset
                self._read_ahead()
                return
        elif ahead is not None:
            ahead[1].result()  # not the chunk wanted: let its read end before another starts
        self.fh.seek(offset)
        self.buf = self.fh.read(want)
        self.base = offset
        self._read_ahead()

    def _read_ahead(self) -> None:
        at = self.base + len(self.buf)
        if self._pool is not None and at < self.size:
            self._ahead = (at, self._pool.submit(os.pread, self.fh.fileno(), CHUNK, at))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # no read left running on the descriptor closed below
        self.fh.close()


def _zero_sector(f: _File, start: int, end: int) -> int | None:
    """The offset of an all-zero aligned 512-byte sector overlapping [start, end), if any."""
    sector = start // SECTOR * SECTOR
    zero = bytes(SECTOR)
    while sector < end and sector + SECTOR <= f.size:
        if f.get(sector, SECTOR) == zero:
            return sector
        sector += SECTOR
    return None


def _valid_record_at(f: _File, pos: int, salt: int) -> bool:
    if pos + RECORD_HEADER_SIZE > f.size:
        return False
    crc, length, rtype, flags, reserved, rsalt, _lamport, _prev, raw_length = RECORD_HEADER.unpack(
        f.get(pos, RECORD_HEADER_SIZE)
    )
    if rsalt != salt or reserved or flags & ~KNOWN_FLAGS or rtype not in _TYPES:
        return False
    if length > MAX_PAYLOAD or raw_length > MAX_PAYLOAD or length > f.size - pos - RECORD_HEADER_SIZE:
        return False
    return bool(zlib.crc32(f.get(pos + 4, RECORD_HEADER_SIZE - 4 + length)) == crc)


def valid_record_after(path: Path, start: int, salt: int) -> bool:
    """Whether any valid record with ``salt`` begins at an offset >= ``start`` of the segment."""
    f = _File(path)
    try:
        needle = struct.pack("<I", salt)
        scan = start + 12  # the salt sits 12 bytes into a record header
        while scan < f.size:
            window = f.get(scan, min(CHUNK, f.size - scan))
            hit = bytes(window).find(needle)
            if hit < 0:
                scan += max(len(window) - 3, 1)
                continue
            candidate = scan + hit - 12
            if candidate >= start and _valid_record_at(f, candidate, salt):
                return True
            scan += hit + 1
        return False
    finally:
        f.close()


_FAST_HEADER = struct.Struct("<IIIIQII")  # RECORD_HEADER with type, flags and reserved read as one u32
_VALID_TFR = frozenset(t | (f << 8) for t in _TYPES for f in range(KNOWN_FLAGS + 1))
_TYPE_BITS = sum(1 << t for t in _TYPES)


def _native() -> Callable[..., tuple[int, int, int, int, int]] | None:
    """The checks of _fast_scan in C for a run of plain records, when the install could build them;
    None without (no C compiler where haios was installed: the Python loop does it all)."""
    try:
        from ._scan import scan
    except ImportError:
        return None
    return scan


_native_scan = _native()


def _scan(view: memoryview, salt: int, lamport: int, crc: int) -> tuple[int, int, int, int, int]:
    """:func:`_fast_scan`'s answer for ``view``: the C loop walks the plain records, the Python loop
    goes on from where it stops (an lz4 record, or one that fails a check: it finds the same)."""
    if _native_scan is None:
        return _fast_scan(view, salt, lamport, crc)
    pos, lamport, crc, count, first = _native_scan(
        view, salt, lamport, crc, _TYPE_BITS, KNOWN_FLAGS, FLAG_LZ4, FLAG_JUMP
    )
    if len(view) - pos < RECORD_HEADER_SIZE:
        return pos, lamport, crc, count, first
    more, lamport, crc, extra, then = _fast_scan(view[pos:], salt, lamport, crc)
    return pos + more, lamport, crc, count + extra, first if count else then


def _fast_scan(view: memoryview, salt: int, lamport: int, crc: int) -> tuple[int, int, int, int, int]:
    """Verify the whole records at the start of ``view`` with as little work per record as possible.

    Stops at the first record that is incomplete in ``view`` or fails any check (the caller's slow
    path then finds out which). Returns (bytes consumed, last Lamport, last CRC, records, first Lamport).
    """
    import lz4.block

    unpack = _FAST_HEADER.unpack_from
    crc32 = zlib.crc32
    decompress = lz4.block.decompress
    valid = _VALID_TFR
    end = len(view)
    limit = end - RECORD_HEADER_SIZE
    pos = count = first = 0
    while pos <= limit:
        rcrc, length, tfr, rsalt, rlamport, rprev, raw_length = unpack(view, pos)
        nxt = pos + RECORD_HEADER_SIZE + length
        if nxt > end or rsalt != salt or rprev != crc or tfr not in valid:
            break
        if rlamport != lamport + 1 and not (tfr & (FLAG_JUMP << 8) and rlamport > lamport):
            break
        if crc32(view[pos + 4 : nxt]) != rcrc:
            break
        if tfr & (FLAG_LZ4 << 8):
            if raw_length > MAX_PAYLOAD or raw_length > lz4_bound(length):
                break
            try:
                if len(decompress(view[pos + RECORD_HEADER_SIZE : nxt], uncompressed_size=raw_length)) != raw_length:
                    break
            except Exception:  # lz4's own error type; the slow path reports it
                break
        elif raw_length != length:
            break
        if not count:
            first = rlamport
        lamport, crc, pos = rlamport, rcrc, nxt
        count += 1
    return pos, lamport, crc, count, first


def whole_records(path: Path, offset: int, lamport: int, crc: int, *, end: int, limit: int) -> tuple[bytes, int, int]:
    """The bytes of segment ``path`` from ``offset`` up to the end of its last whole record within
    ``limit`` bytes (and before ``end``), and the chain state (Lamport index, CRC) after it; the chain
    stands at ``lamport``/``crc`` at ``offset`` (from its top: the segment header's). Only the record
    headers are followed: whoever receives the bytes verifies them (a replica peer does, record by
    record). A first record larger than ``limit`` is taken whole; a header that cannot be followed
    there gives empty bytes (the caller decides)."""
    with open(path, "rb") as fh:
        header = decode_segment_header(fh.read(SEGMENT_HEADER_SIZE))
        start = max(offset, SEGMENT_HEADER_SIZE)
        if offset < SEGMENT_HEADER_SIZE:
            lamport, crc = header.prev_lamport, header.prev_crc
        fh.seek(start)
        window = fh.read(max(0, min(end, offset + limit) - start))
        unpack = _FAST_HEADER.unpack_from
        pos = 0
        while pos + RECORD_HEADER_SIZE <= len(window):
            rcrc, length, _, _, rlamport, _, _ = unpack(window, pos)
            if length > MAX_PAYLOAD or pos + RECORD_HEADER_SIZE + length > len(window):
                break
            pos += RECORD_HEADER_SIZE + length
            lamport, crc = rlamport, rcrc
        if not pos and len(window) >= RECORD_HEADER_SIZE:  # one record larger than the limit
            rcrc, length, _, _, rlamport, _, _ = unpack(window, 0)
            if length <= MAX_PAYLOAD and start + RECORD_HEADER_SIZE + length <= end:
                pos, lamport, crc = RECORD_HEADER_SIZE + length, rlamport, rcrc
        if not pos:
            return b"", lamport, crc
        fh.seek(offset)
        return fh.read(start + pos - offset), lamport, crc


class WalReader:
    """Iterate the records of a WAL, verifying everything; ``cursor`` says where it got to.

    ``from_lamport`` skips records below that index (starting in the right segment);
    ``cursor`` resumes exactly where an earlier reader stopped. ``verify_only`` checks every record
    without yielding any (a much faster loop; the slow path still names the first bad record). With
    ``partial_ok`` a short or
    unfinished record at the very end of the last segment ends the iteration quietly (a writer may
    be appending it right now) instead of being reported.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        from_lamport: int | None = None,
        cursor: Cursor | None = None,
        decode: bool = True,
        partial_ok: bool = False,
        verify_only: bool = False,
        segments: list[Segment] | None = None,
        ends_wal: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.from_lamport = from_lamport
        self._at: tuple[int, int, int, int] | None = None  # the cursor, kept as a tuple while reading
        self.cursor = cursor
        self.decode = decode
        self.partial_ok = partial_ok
        self.verify_only = verify_only
        self.only = segments
        self.ends_wal = ends_wal
        self.records = 0
        self.segments_read = 0
        self.bytes_read = 0
        self.inflated = 0  # bytes decoded beyond BOMB_RATIO x stored so far (bounded: MAX_INFLATION)
        self.first_lamport: int | None = None

    def __iter__(self) -> Iterator[Record]:
        segments = self.only if self.only is not None else list_segments(self.directory)
        if self.cursor is not None:
            segments = [s for s in segments if s.seq >= self.cursor.seq]
        elif self.from_lamport is not None:
            start = 0
            for i, seg in enumerate(segments):
                if seg.first_lamport <= self.from_lamport:
                    start = i
            segments = segments[start:]
        prev: SegmentHeader | None = None
        wal_id: int | None = None
        for index, seg in enumerate(segments):
            last = self.ends_wal and index == len(segments) - 1
            yield from self._segment(seg, last, prev, wal_id)
            prev = self._header
            wal_id = self._header.wal_id

    _header: SegmentHeader

    @property
    def cursor(self) -> Cursor | None:
        """Where the reader got to: just past the last record it read (or yielded)."""
        return None if self._at is None else Cursor(*self._at)

    @cursor.setter
    def cursor(self, value: Cursor | None) -> None:
        self._at = None if value is None else (value.seq, value.offset, value.lamport, value.crc)

    def drain(self) -> WalReader:
        """Read to the end (or the first bad record, which raises), keeping nothing; returns self."""
        for _ in self:
            continue
        return self

    def _fail(self, seg: Segment, bad: _Bad, last: bool, salt: int | None) -> WalCorruptError:
        torn = bad.physical and last and salt is not None and not valid_record_after(seg.path, bad.offset + 1, salt)
        return WalCorruptError(self.directory, Corruption(seg.name, bad.offset, bad.lamport, bad.reason, torn))

    def _segment(self, seg: Segment, last: bool, prev: SegmentHeader | None, wal_id: int | None) -> Iterator[Record]:
        f = _File(seg.path, ahead=self.verify_only)
        try:
            try:
                header = decode_segment_header(bytes(f.get(0, SEGMENT_HEADER_SIZE)))
            except SegmentHeaderError as exc:
                raise self._fail(seg, _Bad(0, str(exc), False, None), last, None) from None
            self._check_header(seg, header, prev, wal_id)
            self._header = header
            self.segments_read += 1
            if self._at is not None and self._at[0] == seg.seq:
                _, pos, lamport, crc = self._at
            else:
                pos, lamport, crc = SEGMENT_HEADER_SIZE, header.prev_lamport, header.prev_crc
            salt = header.salt
            while pos < f.size:
                if self.verify_only:
                    fast = _scan(f.get(pos, min(CHUNK, f.size - pos)), salt, lamport, crc)
                    if fast[3]:
                        consumed, lamport, crc, count, first = fast
                        pos += consumed
                        self.records += count
                        self.bytes_read += consumed
                        if self.first_lamport is None:
                            self.first_lamport = first
                        self._at = (seg.seq, pos, lamport, crc)
                        continue
                else:
                    # the whole records of the next chunk, with the checks of _record in as few
                    # steps as possible; the first that is not plainly good (or not whole in the
                    # chunk) goes to _record below, which says what is wrong with it
                    at = self._at
                    yield from self._fast_records(f.get(pos, min(CHUNK, f.size - pos)), pos, seg, salt, lamport, crc)
                    if self._at is not at and self._at is not None:  # it read some: go on from the last
                        _, pos, lamport, crc = self._at
                    if pos >= f.size:
                        break
                try:
                    slow, stored = self._record(f, seg, pos, salt, lamport, crc)
                except _Bad as bad:
                    if (
                        self.partial_ok
                        and last
                        and bad.physical
                        and bad.reason.startswith(("incomplete", "record runs"))
                    ):
                        return
                    raise self._fail(seg, bad, last, salt) from None
                pos += RECORD_HEADER_SIZE + len(stored)
                self._inflate(seg, pos, len(slow.raw), len(stored))
                lamport, crc = slow.lamport, slow.crc
                self._at = (seg.seq, pos, lamport, crc)
                self.records += 1
                self.bytes_read += RECORD_HEADER_SIZE + len(stored)
                if self.first_lamport is None:
                    self.first_lamport = lamport
                if self.from_lamport is None or lamport >= self.from_lamport:
                    yield slow
            if self._at is None or self._at[0] != seg.seq:
                self._at = (seg.seq, pos, lamport, crc)
        finally:
            f.close()

    def _inflate(self, seg: Segment, pos: int, raw: int, stored: int) -> None:
        """Count what a payload decoded to beyond BOMB_RATIO times what it stores; over the limit of
        one read, stop (a decompression bomb)."""
        self.inflated += max(0, raw - BOMB_RATIO * stored)
        if self.inflated > MAX_INFLATION:
            raise InputError(
                f"{self.directory}/{seg.name}",
                f"compressed payloads up to offset {pos} decode to {self.inflated} bytes beyond "
                f"{BOMB_RATIO}x what they store, over the {MAX_INFLATION}-byte limit of one read (not "
                "corruption: a decompression bomb, or a WAL no haios writer makes)",
                hint="inspect the node; restore its WAL from a replica (haios node rejoin)",
            )

    def _fast_records(
        self, view: memoryview, base: int, seg: Segment, salt: int, lamport: int, crc: int
    ) -> Iterator[Record]:
        """The records that start at ``base`` (``view`` holds the bytes from there; the chain state
        before them is ``lamport`` and ``crc``), as long as each is whole in ``view`` and passes every
        check of :meth:`_record` at once; the reader's position and counts follow each one."""
        import lz4.block

        unpack = _FAST_HEADER.unpack_from
        crc32 = zlib.crc32
        decompress = lz4.block.decompress
        new = _new_record
        valid = _VALID_TFR
        types = _TYPE_OF
        name = seg.name
        seq = seg.seq
        decode = self.decode
        since = self.from_lamport
        end = len(view)
        limit = end - RECORD_HEADER_SIZE
        pos = 0
        while pos <= limit:
            rcrc, length, tfr, rsalt, rlamport, rprev, raw_length = unpack(view, pos)
            nxt = pos + RECORD_HEADER_SIZE + length
            if nxt > end or rsalt != salt or rprev != crc or tfr not in valid:
                return
            if rlamport != lamport + 1 and not (tfr & (FLAG_JUMP << 8) and rlamport > lamport):
                return
            if crc32(view[pos + 4 : nxt]) != rcrc:
                return
            flags = tfr >> 8
            if flags & FLAG_LZ4:
                if raw_length > MAX_PAYLOAD or raw_length > 255 * length + 64:  # lz4_bound
                    return
                try:
                    raw = decompress(view[pos + RECORD_HEADER_SIZE : nxt], uncompressed_size=raw_length)
                except Exception:  # lz4's own error type; _record reports it
                    return
                extra = raw_length - BOMB_RATIO * length
                if len(raw) != raw_length or (extra > 0 and self.inflated + extra > MAX_INFLATION):
                    return
                if extra > 0:
                    self.inflated += extra
            elif raw_length != length:
                return
            else:
                raw = bytes(view[pos + RECORD_HEADER_SIZE : nxt])
            record: Record = new(Record)
            record.__dict__.update(
                lamport=rlamport,
                type=types[tfr & 0xFF],
                segment=name,
                offset=base + pos,
                crc=rcrc,
                flags=flags,
                raw=raw,
            )
            if decode and (since is None or rlamport >= since):
                try:
                    record.payload  # noqa: B018 - parse now: a payload that is not JSON is corruption
                except ValueError:
                    return
            self.bytes_read += nxt - pos
            lamport, crc, pos = rlamport, rcrc, nxt
            self._at = (seq, base + pos, lamport, crc)
            self.records += 1
            if self.first_lamport is None:
                self.first_lamport = lamport
            if since is None or lamport >= since:
                yield record

    def _check_header(
        self, seg: Segment, header: SegmentHeader, prev: SegmentHeader | None, wal_id: int | None
    ) -> None:
        problem = _header_problem(seg, header, prev, wal_id, self._chain_end() if prev is not None else None)
        if problem:
            raise WalCorruptError(self.directory, Corruption(seg.name, 0, None, problem, False))

    def _chain_end(self) -> tuple[int, int]:
        assert self._at is not None
        return (self._at[3], self._at[2])

    def _record(
        self, f: _File, seg: Segment, pos: int, salt: int, lamport: int, prev_crc: int
    ) -> tuple[Record, memoryview]:
        expected = lamport + 1
        left = f.size - pos
        if left < RECORD_HEADER_SIZE:
            raise _Bad(pos, f"incomplete record header ({left} bytes before the end of the file)", True, expected)
        head = f.get(pos, RECORD_HEADER_SIZE)
        crc, length, rtype, flags, reserved, rsalt, rlamport, rprev, raw_length = RECORD_HEADER.unpack(head)
        if length > MAX_PAYLOAD:
            raise _Bad(
                pos, self._physical(f, pos, f"length {length} exceeds the maximum {MAX_PAYLOAD}"), True, expected
            )
        if length > left - RECORD_HEADER_SIZE:
            reason = f"record runs past the end of the file (claims {length} bytes, {left - RECORD_HEADER_SIZE} left)"
            raise _Bad(pos, self._physical(f, pos, reason, pos + RECORD_HEADER_SIZE + length), True, expected)
        body = f.get(pos + 4, RECORD_HEADER_SIZE - 4 + length)
        if zlib.crc32(body) != crc:
            end = pos + RECORD_HEADER_SIZE + length
            raise _Bad(pos, self._physical(f, pos, "CRC mismatch", end), True, expected)
        if rsalt != salt:
            raise _Bad(pos, "salt mismatch: a stale record from another segment", True, expected)
        if reserved or flags & ~KNOWN_FLAGS or rtype not in _TYPES:
            raise _Bad(pos, f"unknown record type {rtype} or flags {flags:#x} (CRC is valid)", False, expected)
        if rlamport != expected and not (flags & FLAG_JUMP and rlamport > lamport):
            raise _Bad(
                pos,
                f"Lamport index {rlamport}, expected {expected}: a record is missing or out of order",
                False,
                expected,
            )
        if rprev != prev_crc:
            raise _Bad(
                pos,
                "prev_crc does not link to the previous record: a record is missing or out of order",
                False,
                expected,
            )
        stored = body[RECORD_HEADER_SIZE - 4 :]
        try:
            raw = decode_payload(stored, raw_length, flags)
            record = Record(rlamport, RecordType(rtype), seg.name, pos, crc, flags, raw)
            if self.decode and (self.from_lamport is None or rlamport >= self.from_lamport):
                record.payload  # noqa: B018 - parse now: a payload that is not JSON is corruption
        except ValueError as exc:
            raise _Bad(pos, f"payload: {exc}", False, expected) from None
        return record, stored

    @staticmethod
    def _physical(f: _File, pos: int, reason: str, end: int | None = None) -> str:
        sector = _zero_sector(f, pos, end if end is not None else f.size)
        return f"{reason}; all-zero sector at offset {sector}" if sector is not None else reason


def read_records(
    directory: Path | str, *, from_lamport: int | None = None, cursor: Cursor | None = None
) -> Iterator[Record]:
    """Every record of the WAL in ``directory`` in order, verified; raises WalCorruptError at the first bad one."""
    return iter(WalReader(wal_dir(directory), from_lamport=from_lamport, cursor=cursor))


@dataclass(frozen=True)
class VerifyReport:
    directory: Path
    segments: int
    records: int
    bytes: int
    first_lamport: int | None
    last_lamport: int | None
    corruption: Corruption | None
    end: tuple[int, int] | None = field(default=None, compare=False)  # chain state after the last good record

    @property
    def ok(self) -> bool:
        return self.corruption is None

    def plus(self, later: VerifyReport) -> VerifyReport:
        """This report followed by one for the segments after it."""
        return VerifyReport(
            self.directory,
            self.segments + later.segments,
            self.records + later.records,
            self.bytes + later.bytes,
            self.first_lamport if self.first_lamport is not None else later.first_lamport,
            later.last_lamport if later.last_lamport is not None else self.last_lamport,
            later.corruption,
            later.end if later.end is not None else self.end,
        )

    def to_json(self) -> dict[str, Any]:
        c = self.corruption
        return {
            "segments": self.segments,
            "records": self.records,
            "bytes": self.bytes,
            "first_lamport": self.first_lamport,
            "last_lamport": self.last_lamport,
            "end": self.end,
            "corruption": None if c is None else [c.segment, c.offset, c.lamport, c.reason, c.torn_tail],
        }

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> VerifyReport:
        c = data["corruption"]
        return cls(
            directory,
            data["segments"],
            data["records"],
            data["bytes"],
            data["first_lamport"],
            data["last_lamport"],
            None if c is None else Corruption(*c),
            (data["end"][0], data["end"][1]) if data["end"] is not None else None,
        )


PARALLEL_MIN_BYTES = 128 * 1024 * 1024
"""WALs smaller than this are verified in-process; larger ones by worker processes, a run of segments each."""


def verify_segments(directory: Path, segments: list[Segment], *, ends_wal: bool) -> VerifyReport:
    """Verify a run of consecutive segments on its own, anchored at the first one's header.

    ``ends_wal`` says whether the run's last segment is the WAL's last (only then can damage be a torn tail).
    """
    reader = WalReader(directory, decode=False, verify_only=True, segments=segments, ends_wal=ends_wal)
    corruption = None
    try:
        reader.drain()
    except WalCorruptError as exc:
        corruption = exc.corruption
    end = reader.cursor
    return VerifyReport(
        directory,
        reader.segments_read,
        reader.records,
        reader.bytes_read,
        reader.first_lamport,
        end.lamport if end is not None and reader.records else None,
        corruption,
        end=None if end is None else (end.lamport, end.crc),
    )


def _verify_parallel(path: Path, segments: list[Segment], jobs: int) -> VerifyReport:
    """Split the segments into ``jobs`` runs of about equal size, verify each in a worker process, stitch."""
    import json
    import subprocess
    import sys

    sizes = [s.path.stat().st_size for s in segments]
    share, acc = sum(sizes) / jobs, 0
    runs: list[list[Segment]] = []
    current: list[Segment] = []
    for seg, size in zip(segments, sizes, strict=True):
        current.append(seg)
        acc += size
        if acc >= share * (len(runs) + 1) and len(runs) < jobs - 1:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "haios.wal._worker",
                str(path),
                "1" if i == len(runs) - 1 else "0",
                *[s.name for s in run],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, run in enumerate(runs)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise VerificationError(f"{path}: a verify worker failed: {' '.join(err.split())[-300:]}")
        outputs.append(json.loads(out))
    total = VerifyReport(path, 0, 0, 0, None, None, None)
    prev_end: tuple[int, int] | None = None
    prev_header: SegmentHeader | None = None
    for run, data in zip(runs, outputs, strict=True):
        part = VerifyReport.from_json(path, data)
        if prev_header is not None:
            try:
                with open(run[0].path, "rb") as fh:
                    header = decode_segment_header(fh.read(SEGMENT_HEADER_SIZE))
            except (OSError, SegmentHeaderError):
                header = None  # the worker reports it
            link = (prev_end[1], prev_end[0]) if prev_end is not None else None  # (crc, lamport)
            problem = header and _header_problem(run[0], header, prev_header, prev_header.wal_id, link)
            if problem:
                return total.plus(
                    VerifyReport(path, 0, 0, 0, None, None, Corruption(run[0].name, 0, None, problem, False))
                )
        total = total.plus(part)
        if part.corruption is not None:
            return total
        prev_end = part.end
        with open(run[-1].path, "rb") as fh:
            prev_header = decode_segment_header(fh.read(SEGMENT_HEADER_SIZE))
    return total


def verify(directory: Path | str, *, jobs: int | None = None) -> VerifyReport:
    """Verify the whole WAL; report the first bad record (if any) and what was read before it.

    Checks the framing of every record (length, CRC, salt, Lamport index, ``prev_crc`` link, lz4
    decoded length) and of every segment; payloads are parsed as JSON by the readers that use them.
    A large WAL is split into ``jobs`` runs of segments (default: one per CPU, one per two CPUs when
    the checks run in C) verified by worker processes and stitched together through the segment
    headers; the verdict is the same.
    """
    path = wal_dir(directory)
    segments = list_segments(path)
    # with the C loop, one process keeps two CPUs busy (the checks, and the reads ahead of them)
    default = (os.cpu_count() or 1) // (2 if _native_scan is not None else 1)
    workers = min(jobs or default or 1, len(segments))
    if workers > 1 and sum(s.path.stat().st_size for s in segments) >= PARALLEL_MIN_BYTES:
        return _verify_parallel(path, segments, workers)
    return verify_segments(path, segments, ends_wal=True)
