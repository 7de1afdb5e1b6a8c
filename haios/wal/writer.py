"""The WAL writer: one per node (an exclusive ``flock``), with group commit.

``append`` encodes the record and writes it under a mutex (so Lamport indexes and bytes are in the
same order); a durable append then waits until an ``fdatasync`` covering its bytes has returned.
Concurrent appenders share syncs: whichever thread finds no sync running starts one covering
everything written so far, the others wait for it (group commit). An error from write or fsync is
fatal: the writer refuses every later append and never retries an fsync on the same descriptor;
reopening repairs the torn tail (nothing acknowledged is lost).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ..clock import wall_time
from ..errors import WalCorruptError, WalFailedError, WalLockedError, WalReadOnlyError
from ..fsutil import TEMP_SUFFIX, fsync_dir, makedirs_durable, temp_name, write_all
from . import format as fmt
from . import summary
from .reader import Cursor, Segment, WalReader, crc32_of, cursor_holds, list_segments
from .repair import repair as repair_wal

log = logging.getLogger("haios.wal")

LOCK_NAME = ".writer.lock"
# How long opening waits for a writer lock that is held: a command forked by another thread of this
# process (or any process) shares every open lock file until it execs, so a lock just released by
# its writer can look held for the few milliseconds a fork takes. A real second writer holds it
# for as long as it runs and is still refused, only after this wait.
LOCK_WAIT = 1.0
# Where the last writer left the WAL (segment, offset, chain state, CRC-32 of the segment's bytes up
# to there), written when it closes: the next open reads those bytes at checksum speed and verifies
# record by record only what came after. A hint: anything that does not check out is ignored and the
# whole last segment verified, as without it.
MARK_NAME = ".writer.verified"
MARK_MAGIC = "haios-wal-verified 1"


@dataclass(frozen=True)
class Upto:
    """The end of a durable append: what every peer must hold before it counts."""

    seq: int
    segment: str
    offset: int
    lamport: int
    crc: int


class Replicator(Protocol):
    """What the WAL needs of its replication (SPEC §6.1; :class:`haios.replication.Replicator`
    implements it): refuse a durable append a majority cannot acknowledge, and stream each one."""

    def ensure_quorum(self) -> None: ...

    def replicate(self, wal: Path, wal_id: int, upto: Upto, local_fsync_s: float) -> Any: ...


@dataclass(frozen=True)
class _Mark:
    segment: str
    offset: int
    last_start: int  # where the record that ends at ``offset`` begins
    lamport: int
    crc: int
    prefix_crc32: int  # zlib.crc32 of the segment's bytes [0, offset)

    def encode(self) -> bytes:
        text = (
            f"{MARK_MAGIC} {self.segment} {self.offset} {self.last_start} {self.lamport} {self.crc} {self.prefix_crc32}"
        )
        return f"{text} {zlib.crc32(text.encode())}\n".encode()

    @classmethod
    def read(cls, directory: Path) -> _Mark | None:
        """The mark in ``directory``, or None when there is none or it does not check out."""
        try:
            with open(directory / MARK_NAME, "rb") as fh:
                raw = fh.read(512)
            text, _, check = raw.decode("ascii").strip().rpartition(" ")
            fields = text.removeprefix(MARK_MAGIC + " ").split(" ")
            if not text.startswith(MARK_MAGIC + " ") or len(fields) != 6 or zlib.crc32(text.encode()) != int(check):
                return None
            mark = cls(fields[0], *(int(f) for f in fields[1:]))
        except (OSError, UnicodeDecodeError, ValueError, TypeError):
            return None
        if not fmt.SEGMENT_NAME.fullmatch(mark.segment) or mark.last_start < fmt.SEGMENT_HEADER_SIZE:
            return None
        return mark if mark.last_start + fmt.RECORD_HEADER_SIZE <= mark.offset else None


def _writer_lock(directory: Path) -> int:
    """The WAL's writer lock, held on the returned descriptor; WalLockedError when another writer
    still holds it after LOCK_WAIT seconds."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + LOCK_WAIT
    pause = 0.002
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WalLockedError(f"{directory}: another process is writing this WAL") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    except BaseException:
        os.close(fd)
        raise


class Wal:
    """A node's write-ahead log. Use :meth:`open`; close it, or use it as a context manager."""

    def __init__(
        self,
        directory: Path,
        *,
        lock_fd: int | None,
        read_only: bool,
        segment_size: int,
        clock: Callable[[], float],
        sync: Callable[[int], None],
    ) -> None:
        self.directory = directory
        self.read_only = read_only
        self.segment_size = segment_size
        self._lock_fd = lock_fd
        self._clock = clock
        self._sync = sync
        self._mutex = threading.Lock()  # order of Lamport indexes and bytes
        self._cond = threading.Condition()  # group commit state below
        self._written = 0  # bytes written by this writer (a running total across segments)
        self._synced = 0  # bytes known durable
        self._syncing = False
        self._failed: BaseException | None = None
        self._fd: int | None = None
        self._seq = 0
        self._offset = 0
        self._last_start: int | None = None  # where the last record this writer appended begins
        self._salt = 0
        self._wal_id = 0
        self._lamport = 0
        self._crc = 0
        self._segment_crc32 = 0  # zlib.crc32 of the current segment's bytes so far (for the mark)
        self._mark_prefix: tuple[int, int] | None = None  # (offset, crc32) a mark vouched for at open
        self.syncs = 0  # fdatasync calls made (group commit shares them)
        self.bytes_written = 0
        self._segment_name = ""
        # With WAL replication (SPEC §6.1): ships every durable append to the node's replica group
        # and returns only when a majority holds it (haios.replication.Replicator).
        self.replicator: Replicator | None = None  # set by the node when its policy replicates

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        read_only: bool = False,
        segment_size: int = fmt.DEFAULT_SEGMENT_SIZE,
        clock: Callable[[], float] = wall_time,
        sync: Callable[[int], None] = os.fdatasync,
        repair_torn_tail: bool = True,
    ) -> Wal:
        """Open (creating if needed) the WAL in ``directory``.

        Takes the exclusive writer lock unless ``read_only`` (waiting up to LOCK_WAIT for it). A torn
        tail left by a crash is repaired (the cut bytes kept in ``<segment>.broken``); mid-log
        corruption raises WalCorruptError.
        """
        path = Path(directory)
        if segment_size < fmt.SEGMENT_HEADER_SIZE + fmt.RECORD_HEADER_SIZE:
            raise ValueError("segment_size is too small")
        lock_fd = None
        if not read_only:
            makedirs_durable(path)
            lock_fd = _writer_lock(path)
        wal = cls(path, lock_fd=lock_fd, read_only=read_only, segment_size=segment_size, clock=clock, sync=sync)
        try:
            wal._recover(repair_torn_tail and not read_only)
        except BaseException:
            wal.close()
            raise
        return wal

    def _recover(self, repair: bool) -> None:
        if not self.read_only:
            # A crash during rotation can leave a temp segment that was never renamed into place.
            for name in os.listdir(self.directory):
                if name.startswith(".") and name.endswith(".wal" + TEMP_SUFFIX):
                    os.unlink(self.directory / name)
        segments = list_segments(self.directory)
        if not segments:
            self._wal_id = secrets.randbits(63)
            return
        last = segments[-1]
        reader = self._from_mark(last)
        if reader is None:
            reader = WalReader(self.directory, from_lamport=last.first_lamport, decode=False, verify_only=True)
            try:
                reader.drain()
            except WalCorruptError as exc:
                if not (repair and exc.corruption.torn_tail):
                    raise
                report = repair_wal(self.directory)
                log.warning("repaired torn WAL tail: %s", report.summary())
                reader = WalReader(self.directory, from_lamport=last.first_lamport, decode=False, verify_only=True)
                reader.drain()
        header = reader._header
        cursor = reader.cursor or Cursor(last.seq, fmt.SEGMENT_HEADER_SIZE, header.prev_lamport, header.prev_crc)
        self._wal_id = header.wal_id
        self._seq, self._offset, self._salt = last.seq, cursor.offset, header.salt
        self._segment_name = last.name
        self._lamport, self._crc = cursor.lamport, cursor.crc
        if not self.read_only:  # the running CRC-32 of the segment, for the mark this writer leaves
            self._segment_crc32 = crc32_of(last.path, cursor.offset, self._mark_prefix)
            self._fd = os.open(last.path, os.O_WRONLY | os.O_CLOEXEC)
            os.lseek(self._fd, self._offset, os.SEEK_SET)

    def _from_mark(self, last: Segment) -> WalReader | None:
        """A reader drained from where the last writer's mark says the verified bytes end, when the
        mark names this segment and those bytes still have its CRC-32; else None."""
        mark = _Mark.read(self.directory)
        if mark is None or mark.segment != last.name:
            return None
        cursor = Cursor(last.seq, mark.offset, mark.lamport, mark.crc)
        try:
            crc32 = crc32_of(last.path, mark.offset)
            if crc32 != mark.prefix_crc32 or not cursor_holds(self.directory, cursor, mark.last_start):
                return None
            reader = WalReader(self.directory, segments=[last], cursor=cursor, decode=False, verify_only=True)
            reader.drain()
        except (OSError, WalCorruptError):
            return None  # a tail that does not verify: the whole segment is read, and repaired if torn
        self._mark_prefix = (mark.offset, crc32)  # only what follows is read again for the running CRC-32
        return reader

    # -- appending -------------------------------------------------------------------------------

    @property
    def last_lamport(self) -> int:
        return self._lamport

    @property
    def last_record_start(self) -> int | None:
        """The offset (in the current segment) of the last record this writer appended, if any."""
        with self._mutex:
            return self._last_start

    def position(self) -> Cursor:
        """Where the next record will go, with the chain state a reader needs to continue from there."""
        with self._mutex:
            return Cursor(self._seq, self._offset, self._lamport, self._crc)

    def append(
        self,
        rtype: fmt.RecordType,
        payload: dict[str, Any],
        *,
        durable: bool = True,
        observed_lamport: int | None = None,
    ) -> int:
        """Append a record; return its Lamport index. Durable types are synced before returning.

        ``observed_lamport`` is a peer event's index: the record then gets max(local, remote) + 1.
        """
        if self.read_only:
            raise WalReadOnlyError(f"{self.directory}: WAL is read-only; {rtype.name} refused")
        rtype = fmt.RecordType(rtype)
        missing = [f for f in fmt.REQUIRED_FIELDS[rtype] if f not in payload]
        if missing:
            raise ValueError(f"{rtype.name} record lacks {', '.join(missing)}")
        if "ts" not in payload:
            payload = {**payload, "ts": self._clock()}
        stored, raw_length, flags = fmt.encode_payload(payload)
        durable = durable or rtype in fmt.DURABLE_TYPES
        replicator = self.replicator if durable else None
        if replicator is not None:
            replicator.ensure_quorum()  # refuse before writing when a majority cannot be reached
        with self._mutex:
            self._check_usable()
            lamport = self._lamport + 1
            if observed_lamport is not None and observed_lamport >= lamport:
                lamport = observed_lamport + 1
                flags |= fmt.FLAG_JUMP
            size = fmt.RECORD_HEADER_SIZE + len(stored)
            if self._fd is None or (self._offset + size > self.segment_size and self._offset > fmt.SEGMENT_HEADER_SIZE):
                self._rotate(lamport)
            data, crc = fmt.encode_record(rtype, stored, raw_length, flags, self._salt, lamport, self._crc)
            assert self._fd is not None
            try:
                write_all(self._fd, data)
            except OSError as exc:
                raise self._fatal(exc, "write") from exc
            self._last_start = self._offset
            self._offset += len(data)
            self._segment_crc32 = zlib.crc32(data, self._segment_crc32)
            self._lamport, self._crc = lamport, crc
            self.bytes_written += len(data)
            with self._cond:
                self._written += len(data)
                target = self._written
            upto = (self._seq, self._segment_name, self._offset, lamport, crc)
        if durable:
            started = time.monotonic()
            self._sync_to(target)
            if replicator is not None:
                replicator.replicate(self.directory, self._wal_id, Upto(*upto), time.monotonic() - started)
        return lamport

    def sync(self) -> None:
        """Make everything appended so far durable."""
        with self._cond:
            target = self._written
        self._sync_to(target)

    def _sync_to(self, target: int) -> None:
        with self._cond:
            while self._synced < target:
                if self._failed is not None:
                    raise WalFailedError(f"{self.directory}: an earlier WAL write failed ({self._failed})")
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                goal = self._written
                fd = self._fd
                self._cond.release()
                error: OSError | None = None
                try:
                    if fd is not None:
                        self._sync(fd)
                        self.syncs += 1
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    if error is None:
                        self._synced = max(self._synced, goal)
                    else:
                        self._failed = error
                    self._cond.notify_all()
                if error is not None:
                    raise self._fatal(error, "fsync") from error

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise WalFailedError(f"{self.directory}: an earlier WAL write failed ({self._failed})")
        if self._lock_fd is None:
            raise WalFailedError(f"{self.directory}: the WAL is closed")

    def _fatal(self, exc: OSError, action: str) -> WalFailedError:
        with self._cond:
            if self._failed is None:
                self._failed = exc
            self._cond.notify_all()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = "the disk is full; free space, then reopen the WAL" if exc.errno == errno.ENOSPC else None
        return WalFailedError(f"{self.directory}: WAL {action} failed: {reason}; the writer stops", hint=hint)

    def _rotate(self, first_lamport: int) -> None:
        """Start a new segment (called with the mutex held): sync the old one, create the new one durably."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self._syncing = True
        try:
            if self._fd is not None:
                try:
                    self._sync(self._fd)
                    self.syncs += 1
                except OSError as exc:
                    with self._cond:
                        self._failed = exc
                    raise self._fatal(exc, "fsync") from exc
                with self._cond:
                    self._synced = self._written
                os.close(self._fd)
                self._fd = None
            seq = self._seq + 1 if list_segments(self.directory) else 0
            salt = secrets.randbits(32)
            header = fmt.SegmentHeader(seq, first_lamport, self._wal_id, salt, self._crc, self._lamport)
            name = fmt.segment_name(seq, first_lamport)
            tmp = self.directory / temp_name(name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                encoded = header.encode()
                try:
                    write_all(fd, encoded)
                    self._sync(fd)
                except BaseException:
                    os.close(fd)
                    raise
                os.rename(tmp, self.directory / name)
                fsync_dir(self.directory)
            except OSError as exc:
                raise self._fatal(exc, "segment rotation") from exc
            self._fd = fd
            self._seq, self._offset, self._salt = seq, fmt.SEGMENT_HEADER_SIZE, salt
            self._segment_name = name
            self._segment_crc32 = zlib.crc32(encoded)
            self.bytes_written += fmt.SEGMENT_HEADER_SIZE
        finally:
            with self._cond:
                self._syncing = False
                self._cond.notify_all()

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Sync what was appended, leave the mark of where the verified bytes end and bring the WAL's
        summary up to date (when this writer appended), and release the writer lock. Safe to call
        twice."""
        try:
            if self._fd is not None and self._failed is None:
                self.sync()
                if self._last_start is not None and self._failed is None:
                    self._leave_mark()
                    summary.refresh(self.directory, self.bytes_written)  # into the WAL's own summary
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _leave_mark(self) -> None:
        mark = _Mark(
            self._segment_name, self._offset, self._last_start or 0, self._lamport, self._crc, self._segment_crc32
        )
        tmp = self.directory / (MARK_NAME + TEMP_SUFFIX)
        try:
            with open(tmp, "wb") as fh:
                fh.write(mark.encode())
            os.replace(tmp, self.directory / MARK_NAME)
        except OSError as exc:  # only a hint: the next open verifies the whole last segment instead
            log.debug("%s: could not leave the WAL mark: %s", self.directory, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def __enter__(self) -> Wal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
