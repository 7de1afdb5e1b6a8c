"""A read-only SFTP (version 3) client that sends a step's requests together and then reads the answers.

paramiko's SFTP client waits for each answer before it sends the next request: mirroring one node
(two listings, five control files, the WAL's new bytes) took about thirty round trips, each one SSH
packet each way with its own MAC, wake-ups in the client's threads and in the server's. Here the
requests of a step (open every file, read every opened file, ...) leave in one write and their
answers are matched by request id; a node is mirrored in four or five steps.

The server is one of the nodes and is treated like any file they hold (an attacker may have written
it): an answer longer than :data:`MAX_PACKET`, one that does not parse, one to a request that was not
made or that brings more data than was asked for ends the session with :class:`ProtocolError`
before any of it is used. Nothing is ever written on the server: haios changes a node's files only
through ``haios node`` commands.

Requests and answers (draft-ietf-secsh-filexfer-02): every packet is a uint32 length, a type byte,
and (after INIT/VERSION) a uint32 request id; strings are a uint32 length and bytes.
"""

from __future__ import annotations

import errno
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

VERSION = 3
CHUNK = 32 * 1024
"""Bytes a READ asks for: what every SFTP server answers in full (OpenSSH's allows 256 KiB)."""
WINDOW = 64
"""READs of one file in flight at once (2 MiB): a cold copy of a large segment streams at the
connection's speed, and a step never holds more than this many chunks of one file."""
MAX_PACKET = 1024 * 1024
"""Longest answer accepted (OpenSSH's server sends at most 256 KiB)."""
MAX_ENTRIES = 1_000_000
"""Longest directory listing accepted: a listing without end is a server that never stops."""

_INIT, _VERSION, _OPEN, _CLOSE, _READ, _LSTAT, _OPENDIR, _READDIR = 1, 2, 3, 4, 5, 7, 11, 12
_STATUS, _HANDLE, _DATA, _NAME, _ATTRS = 101, 102, 103, 104, 105
_OK, _EOF, _NO_SUCH_FILE, _PERMISSION_DENIED = 0, 1, 2, 3
_READ_FLAG = 0x1
_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME, _ATTR_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBI")  # length, type, request id


class ProtocolError(OSError):
    """The server broke the SFTP protocol; the session cannot be trusted any further."""


@dataclass(frozen=True)
class Entry:
    """A directory entry or a file's attributes, named as ``os.stat_result`` names them (a server may
    leave out any attribute: None)."""

    filename: str
    st_size: int | None = None
    st_mode: int | None = None
    st_mtime: int | None = None

    def is_regular(self) -> bool:
        return self.st_mode is not None and stat.S_ISREG(self.st_mode)


class _Reader:
    """Fields of one answer, each read with its bounds checked."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def number(self, form: struct.Struct) -> int:
        if self.pos + form.size > len(self.data):
            raise ProtocolError(errno.EPROTO, "an SFTP answer ends inside a number")
        (value,) = form.unpack_from(self.data, self.pos)
        self.pos += form.size
        return int(value)

    def u32(self) -> int:
        return self.number(_U32)

    def u64(self) -> int:
        return self.number(_U64)

    def string(self) -> bytes:
        length = self.u32()
        if self.pos + length > len(self.data):
            raise ProtocolError(errno.EPROTO, "an SFTP answer ends inside a string")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def attrs(self, name: str) -> Entry:
        flags = self.u32()
        size = self.u64() if flags & _ATTR_SIZE else None
        if flags & _ATTR_UIDGID:
            self.u32(), self.u32()
        mode = self.u32() if flags & _ATTR_PERMISSIONS else None
        mtime = None
        if flags & _ATTR_ACMODTIME:
            self.u32()
            mtime = self.u32()
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.string(), self.string()
        return Entry(name, size, mode, mtime)


def _string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _status_error(reader: _Reader, path: str) -> OSError | None:
    """The error a STATUS answer stands for (None for OK and EOF, which the caller interprets)."""
    code = reader.u32()
    try:
        message = reader.string().decode("utf-8", "replace")
    except ProtocolError:
        message = ""  # the message is optional in practice: some servers send none
    if code in (_OK, _EOF):
        return None
    if code == _NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, "no such file", path)
    if code == _PERMISSION_DENIED:
        return PermissionError(errno.EACCES, "permission denied", path)
    return OSError(errno.EIO, f"the SFTP server refused (status {code}: {' '.join(message.split())[:200]})", path)


@dataclass
class _Request:
    kind: int
    body: bytes
    path: str  # what an error names
    want: int  # the answer type that is not a STATUS
    limit: int = 0  # READ: the most data it may bring


Answer = Any  # bytes (a handle or data), list[Entry], Entry, None (OK or EOF), or an OSError


class Sftp:
    """One SFTP session over ``channel`` (anything with ``sendall`` and ``recv``, such as a paramiko
    channel on which the ``sftp`` subsystem was started). A step at a time: callers in several
    threads take turns. ``on_data`` is told how many bytes of file data each READ brought."""

    def __init__(self, channel: Any, *, on_data: Callable[[int], None] | None = None) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._next = 1
        self._pending: set[int] = set()  # CLOSEs sent and not answered yet: their answers are skipped
        self._on_data = on_data
        channel.sendall(struct.pack(">IBI", 5, _INIT, VERSION))
        kind, data = self._packet()
        if kind != _VERSION or len(data) < 5 or _U32.unpack_from(data, 1)[0] != VERSION:
            raise ProtocolError(errno.EPROTO, "the server does not speak SFTP version 3")

    # -- the wire ---------------------------------------------------------------------------------

    def _packet(self) -> tuple[int, bytes]:
        """The next answer: its type and its bytes from the type byte on."""
        while len(self._buffer) < 4 or len(self._buffer) < 4 + _U32.unpack_from(self._buffer)[0]:
            if len(self._buffer) >= 4 and not 0 < _U32.unpack_from(self._buffer)[0] <= MAX_PACKET:
                raise ProtocolError(errno.EPROTO, "an SFTP answer longer than any server sends, or empty")
            chunk = self.channel.recv(max(65536, CHUNK + 64))
            if not chunk:
                raise EOFError("the SFTP session ended")
            self._buffer += chunk
        length = _U32.unpack_from(self._buffer)[0]
        if not 0 < length <= MAX_PACKET:
            raise ProtocolError(errno.EPROTO, "an SFTP answer longer than any server sends, or empty")
        data = bytes(self._buffer[4 : 4 + length])
        del self._buffer[: 4 + length]
        return data[0], data

    def step(self, requests: Sequence[_Request]) -> list[Answer]:
        """Send ``requests`` in one write; their answers, in their order."""
        with self._lock:
            ids = list(range(self._next, self._next + len(requests)))
            self._next += len(requests)
            out = bytearray()
            for rid, r in zip(ids, requests, strict=True):
                out += _HEAD.pack(len(r.body) + 5, r.kind, rid) + r.body
            if out:
                self.channel.sendall(bytes(out))
            waiting = dict(zip(ids, requests, strict=True))
            answers: dict[int, Answer] = {}
            while waiting:
                kind, data = self._packet()
                if len(data) < 5:
                    raise ProtocolError(errno.EPROTO, "an SFTP answer without a request id")
                rid = _U32.unpack_from(data, 1)[0]
                if rid in self._pending:
                    self._pending.discard(rid)  # a handle closed in passing: nothing to do with it
                    continue
                request = waiting.pop(rid, None)
                if request is None:
                    raise ProtocolError(errno.EPROTO, f"an SFTP answer to request {rid}, which was not made")
                answers[rid] = self._answer(kind, _Reader(data, 5), request)
            return [answers[rid] for rid in ids]

    def _answer(self, kind: int, reader: _Reader, request: _Request) -> Answer:
        if kind == _STATUS:
            error = _status_error(reader, request.path)
            if error is None and request.kind not in (_READ, _READDIR):  # only these can come to an end
                raise ProtocolError(errno.EPROTO, f"{request.path}: an SFTP answer with no error and nothing else")
            return error
        if kind != request.want:
            raise ProtocolError(errno.EPROTO, f"an SFTP answer of type {kind} where {request.want} was due")
        if kind == _HANDLE:
            return reader.string()
        if kind == _DATA:
            data = reader.string()
            if len(data) > request.limit:
                raise ProtocolError(errno.EPROTO, f"{request.path}: the server sent more data than was asked for")
            if self._on_data is not None:
                self._on_data(len(data))
            return data
        if kind == _ATTRS:
            return reader.attrs(request.path.rsplit("/", 1)[-1])
        names = []  # NAME
        for _ in range(reader.u32()):
            filename = reader.string().decode("utf-8", "surrogateescape")
            reader.string()  # the ls -l line
            names.append(reader.attrs(filename))
        return names

    # -- requests ---------------------------------------------------------------------------------

    def close_later(self, handles: Sequence[bytes]) -> None:
        """Close ``handles`` without waiting: their answers are read (and skipped) with the next step's."""
        if not handles:
            return
        with self._lock:
            out = bytearray()
            for handle in handles:
                body = _string(handle)
                out += _HEAD.pack(len(body) + 5, _CLOSE, self._next) + body
                self._pending.add(self._next)
                self._next += 1
            self.channel.sendall(bytes(out))

    # -- what haios asks ----------------------------------------------------------------------------

    def open_many(self, paths: Sequence[str]) -> list[bytes | OSError]:
        """A handle for reading each file, or the error it gave."""
        return self.step(
            [_Request(_OPEN, _string(p.encode()) + _U32.pack(_READ_FLAG) + _U32.pack(0), p, _HANDLE) for p in paths]
        )

    def lstat(self, path: str) -> Entry:
        (answer,) = self.step([_Request(_LSTAT, _string(path.encode()), path, _ATTRS)])
        if isinstance(answer, OSError):
            raise answer
        if not isinstance(answer, Entry):
            raise ProtocolError(errno.EPROTO, f"{path}: no attributes in the answer")
        return answer

    def listdirs(self, paths: Sequence[str]) -> list[list[Entry] | OSError]:
        """The entries of each directory (without ``.`` and ``..``), or the error it gave."""
        opened = self.step([_Request(_OPENDIR, _string(p.encode()), p, _HANDLE) for p in paths])
        out: list[list[Entry] | OSError] = [a if isinstance(a, OSError) else [] for a in opened]
        busy = {i: a for i, a in enumerate(opened) if isinstance(a, bytes)}
        while busy:
            # two READDIRs a directory in flight: a listing of up to two answers (OpenSSH's: 200
            # entries) takes one step; a READDIR after the end is answered "end" once more
            order = [i for i in busy for _ in range(2)]
            answers = self.step([_Request(_READDIR, _string(busy[i]), paths[i], _NAME) for i in order])
            ended: set[int] = set()
            for i, answer in zip(order, answers, strict=True):
                listing = out[i]
                if i in ended or isinstance(listing, OSError):
                    continue
                if not isinstance(answer, list):  # the end (None), or an error
                    if isinstance(answer, OSError):
                        out[i] = answer
                    ended.add(i)
                    continue
                listing.extend(e for e in answer if e.filename not in (".", ".."))
                if len(listing) > MAX_ENTRIES:
                    raise ProtocolError(errno.EPROTO, f"{paths[i]}: a listing of over {MAX_ENTRIES} entries")
            self.close_later([busy.pop(i) for i in sorted(ended)])
        return out

    def copy(self, ranges: Sequence[Range]) -> None:
        """Fill every range, all of them a step at a time, until each is whole, at its file's end or
        failed (``Range.error``)."""
        busy = [r for r in ranges if not r.done]
        while busy:
            plan = [(r, req) for r in busy for req in r.requests()]
            answers = self.step([req for _, req in plan])
            for (r, req), answer in zip(plan, answers, strict=True):
                r.take(req, answer)
            busy = [r for r in busy if not r.done]

    def read_files(self, files: Sequence[tuple[str, int, int]]) -> list[bytes | OSError]:
        """The whole of each ``(path, expected size, limit)``, read to its end but never more than
        ``limit + 1`` bytes (a caller that gets more knows the file is over its limit); the expected
        size (from a listing) lets a file and its end be asked for in one step."""
        handles = self.open_many([p for p, _, _ in files])
        reads: list[Range | OSError] = [
            Range(path, h, 0, limit + 1, expect=size) if isinstance(h, bytes) else h
            for (path, size, limit), h in zip(files, handles, strict=True)
        ]
        try:
            self.copy([r for r in reads if isinstance(r, Range)])
        finally:
            self.close_later([h for h in handles if isinstance(h, bytes)])
        return [r.result() if isinstance(r, Range) else r for r in reads]


class Range:
    """Bytes ``start`` to ``stop`` of a file opened as ``handle`` (fewer at its end), gathered from
    READs, any of which may come back short. ``expect``: where the file is thought to end (a
    listing's size); the first step asks for the bytes up to there and for one byte after, so that
    a file that is as listed is read, its end included, in one step. ``sink`` takes the bytes as they
    come (else they are kept: :meth:`result`)."""

    def __init__(
        self,
        path: str,
        handle: bytes,
        start: int,
        stop: int,
        *,
        expect: int | None = None,
        sink: Callable[[bytes], object] | None = None,
    ) -> None:
        self.path, self.handle, self.start, self.stop = path, handle, start, stop
        self.pos = start
        self._expect = None if expect is None else min(max(expect, start), stop)
        self.sink = sink
        self.kept = bytearray()
        self.error: OSError | None = None
        self.at_end = False

    @property
    def done(self) -> bool:
        return self.error is not None or self.at_end or self.pos >= self.stop

    def requests(self) -> list[_Request]:
        """The READs of the next step (at most WINDOW chunks, and the byte after an expected end)."""
        if self._expect is None:
            return [self._chunk(o, self.stop) for o in range(self.pos, self.stop, CHUNK)[:WINDOW]]
        upto, self._expect = self._expect, None  # one guess: from the next step on, what is left
        offsets = range(self.pos, upto, CHUNK)[:WINDOW]
        out = [self._chunk(o, upto) for o in offsets]
        if upto < self.stop and (not offsets or offsets[-1] + CHUNK >= upto):
            out.append(self._chunk(upto, upto + 1))  # and is that the end?
        return out

    def _chunk(self, offset: int, upto: int) -> _Request:
        length = min(CHUNK, upto - offset)
        return _Request(_READ, _string(self.handle) + _U64.pack(offset) + _U32.pack(length), self.path, _DATA, length)

    def take(self, request: _Request, answer: Answer) -> None:
        """One READ's answer, in the order they were asked for."""
        if self.done or _U64.unpack_from(request.body, 4 + len(self.handle))[0] != self.pos:
            return  # after a short answer: what follows it is asked for again
        if isinstance(answer, OSError):
            self.error = answer
        elif not answer:  # EOF (None), or an empty DATA answer
            self.at_end = True
        else:
            data = answer[: self.stop - self.pos]
            self.pos += len(data)
            if self.sink is not None:
                self.sink(data)
            else:
                self.kept += data

    def result(self) -> bytes | OSError:
        return self.error if self.error is not None else bytes(self.kept)
