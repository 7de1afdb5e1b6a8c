"""The replica side of WAL replication (SPEC §6.1): what a peer does with another node's records.

A peer keeps a byte-for-byte copy of each origin's WAL under ``replicas/<origin>/`` — the same
segment files, names and chain — so a replica is verified, read and restored with the very code that
handles a local WAL. Records arrive as chunks: the bytes of one segment from an offset, lz4-compressed
when that is smaller, with the chain state (Lamport index and CRC) before and after them. A chunk is
written, fsynced and then *verified* (every record's CRC, salt, Lamport index and link, starting from
the chain state it names) before the peer acknowledges it with ``(token, crc)``: the Lamport index
and chained CRC of the last record it now holds. A chunk that fails verification is cut off again
and refused. Bytes that disagree with what the replica already holds at the same offset (the origin
lost records it had acknowledged, then wrote new ones) are kept aside as ``<segment>.diverged.N``,
never silently overwritten.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lz4.block

from ..errors import ReplicaChunkError, UsageError, WalCorruptError
from ..fsutil import fsync_dir, locked_dir, makedirs_durable, write_all
from ..node.manifest import file_sha256
from ..wal.format import SEGMENT_HEADER_SIZE, SEGMENT_NAME, decode_segment_header, lz4_decode
from ..wal.reader import Cursor, WalReader, list_segments, verify

REPLICAS_DIR = "replicas"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Chunk:
    """Bytes of one segment of ``origin``'s WAL, from ``offset``, with the chain state around them."""

    origin: str
    wal_id: int
    segment: str
    offset: int
    data: bytes  # raw (uncompressed) bytes
    start_lamport: int  # the chain before the first byte (ignored when offset is 0: the header says)
    start_crc: int
    end_lamport: int  # the chain after the last byte
    end_crc: int
    sync: bool = True  # False: this peer is ack-only (--permit-async)

    def encode(self) -> dict[str, Any]:
        """The JSON form, its bytes as an lz4 block when that is smaller (what travels to the peer)."""
        return {
            "op": "replica_append",
            "origin": self.origin,
            "wal_id": self.wal_id,
            "segment": self.segment,
            "offset": self.offset,
            **pack(self.data),
            "start": [self.start_lamport, self.start_crc],
            "end": [self.end_lamport, self.end_crc],
            "sync": self.sync,
        }

    @classmethod
    def decode(cls, request: dict[str, Any]) -> Chunk:
        try:
            data = unpack(request)
            chunk = cls(
                origin=str(request["origin"]),
                wal_id=int(request["wal_id"]),
                segment=str(request["segment"]),
                offset=int(request["offset"]),
                data=data,
                start_lamport=int(request["start"][0]),
                start_crc=int(request["start"][1]),
                end_lamport=int(request["end"][0]),
                end_crc=int(request["end"][1]),
                sync=bool(request.get("sync", True)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ReplicaChunkError(f"a malformed replication chunk: {exc}") from None
        if not NAME_RE.fullmatch(chunk.origin) or not SEGMENT_NAME.fullmatch(chunk.segment) or chunk.offset < 0:
            raise ReplicaChunkError(f"a replication chunk names {chunk.origin!r}/{chunk.segment!r}: not allowed")
        return chunk


def replica_dir(root: Path, origin: str) -> Path:
    if not NAME_RE.fullmatch(origin):
        raise UsageError(f"{origin!r} is not a node name")
    return root / REPLICAS_DIR / origin


def _keep_aside(path: Path, offset: int) -> str:
    """Move the bytes of ``path`` from ``offset`` to a new ``<name>.diverged.N``; return its name."""
    n = 0
    while (aside := path.with_name(f"{path.name}.diverged.{n}")).exists():
        n += 1
    with open(path, "rb") as src:
        src.seek(offset)
        tail = src.read()
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, tail)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(path, "r+b") as fh:
        fh.truncate(offset)
        os.fsync(fh.fileno())
    fsync_dir(path.parent)
    return aside.name


def _drop_later(directory: Path, seq: int) -> list[str]:
    """Keep aside whole segments after ``seq`` (the origin's WAL no longer has them)."""
    moved = []
    for seg in list_segments(directory):
        if seg.seq > seq and seg.path.stat().st_size > 0:
            moved.append(_keep_aside(seg.path, 0))
            seg.path.unlink()
    return moved


def common_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes ``a`` and ``b`` have in common, comparing slices in halves (each
    comparison in C) rather than byte by byte: a resent 4 MiB chunk costs microseconds, not seconds."""
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low]; the answer is in [low, high]
    left, right = memoryview(a), memoryview(b)
    if left[:high] == right[:high]:
        return high
    while high - low > 1:  # a[:high] != b[:high]
        middle = (low + high) // 2
        if left[low:middle] == right[low:middle]:
            low = middle
        else:
            high = middle
    return low


def receive(root: Path, request: dict[str, Any], *, sync: Callable[[int], None] = os.fdatasync) -> dict[str, Any]:
    """Store one chunk under ``replicas/<origin>/``; answer the ack (or where the replica stands).

    Answers ``{"ok": true, "token": lamport, "crc": crc, "offset": end, "fsync_s": s}`` when the chunk
    is durable (or written, for an ack-only peer) and verified; ``{"ok": false, "have": n}`` when the
    replica's copy of the segment ends at ``n`` before the chunk starts (the origin resends from there).
    """
    started = time.monotonic()
    chunk = Chunk.decode(request)
    directory = replica_dir(root, chunk.origin)
    makedirs_durable(directory)
    with locked_dir(directory):  # one writer per replica, whoever ships to it
        path = directory / chunk.segment
        have = path.stat().st_size if path.exists() else 0
        if have < chunk.offset:
            return {"ok": False, "have": have, "segment": chunk.segment}
        diverged: list[str] = _drop_later(directory, int(chunk.segment[:16], 16))
        data, offset = chunk.data, chunk.offset
        if have > offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                held = fh.read(len(data))
            same = common_prefix(held, data)
            if same < len(held) and same < len(data):
                diverged.append(_keep_aside(path, offset))  # the origin's history changed here: keep the old one
                have = offset
            elif have >= offset + len(data):
                return _ack(chunk, path, started, diverged)  # already held (a resend)
            else:
                data, offset = data[have - offset :], have
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            write_all(fd, data)
            os.ftruncate(fd, offset + len(data))
            fsync_started = time.monotonic()
            if chunk.sync:
                sync(fd)
            fsync_s = time.monotonic() - fsync_started
        finally:
            os.close(fd)
        if created:
            fsync_dir(directory)
        try:
            _verify_chunk(directory, chunk)
        except ReplicaChunkError:
            with open(path, "r+b") as fh:
                fh.truncate(chunk.offset)
                os.fsync(fh.fileno())
            raise
        return {**_ack(chunk, path, started, diverged), "fsync_s": fsync_s}


def _ack(chunk: Chunk, path: Path, started: float, diverged: list[str]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "ok": True,
        "token": chunk.end_lamport,
        "crc": chunk.end_crc,
        "segment": chunk.segment,
        "offset": path.stat().st_size,
        "synced": chunk.sync,
        "elapsed_s": time.monotonic() - started,
    }
    if diverged:
        answer["diverged"] = diverged
    return answer


def _verify_chunk(directory: Path, chunk: Chunk) -> None:
    """Read the chunk's records back from disk and check that the chain ends where the origin said."""
    seq = int(chunk.segment[:16], 16)
    segs = [s for s in list_segments(directory) if s.seq == seq]
    if chunk.offset < SEGMENT_HEADER_SIZE:
        reader = WalReader(directory, segments=segs, decode=False, verify_only=True)
    else:
        cursor = Cursor(seq, chunk.offset, chunk.start_lamport, chunk.start_crc)
        reader = WalReader(directory, segments=segs, cursor=cursor, decode=False, verify_only=True)
    try:
        reader.drain()
    except WalCorruptError as exc:
        raise ReplicaChunkError(
            f"{chunk.origin}/{chunk.segment}: chunk at offset {chunk.offset} does not verify: "
            f"{exc.corruption.describe()}"
        ) from None
    header = reader._header
    if header.wal_id != chunk.wal_id:
        raise ReplicaChunkError(f"{chunk.origin}/{chunk.segment}: the segment belongs to another WAL")
    end = reader.cursor
    assert end is not None  # set at the end of every segment read
    if (end.lamport, end.crc) != (chunk.end_lamport, chunk.end_crc):
        raise ReplicaChunkError(
            f"{chunk.origin}/{chunk.segment}: the chain ends at lamport {end.lamport}, the origin says {chunk.end_lamport}"
        )


def status(root: Path, origin: str, *, check: bool = True, prefix: bool = False) -> dict[str, Any]:
    """Where the replica of ``origin`` stands: its segments (name, size) and, with ``check``, whether
    it verifies and the Lamport index of its last good record. With ``prefix``, also the SHA-256 of
    its last segment's bytes (``{"segment", "size", "sha256"}``): an origin whose own bytes hash the
    same resumes shipping at that size instead of sending the segment again from its top."""
    directory = replica_dir(root, origin)
    segments = list_segments(directory)
    if not segments:
        return {"origin": origin, "segments": [], "lamport": 0, "ok": True, "wal_id": None}
    if not check:
        listed: dict[str, Any] = {"origin": origin, "segments": [[s.name, s.path.stat().st_size] for s in segments]}
        if prefix:
            last = segments[-1].path
            size = last.stat().st_size  # before hashing: a chunk landing meanwhile only makes the hashes differ
            digest = file_sha256(last)
            if digest is not None:
                listed["prefix"] = {"segment": last.name, "size": size, "sha256": digest}
        return listed
    report = verify(directory, jobs=1)
    with open(segments[0].path, "rb") as fh:
        wal_id = decode_segment_header(fh.read(SEGMENT_HEADER_SIZE)).wal_id
    answer: dict[str, Any] = {
        "origin": origin,
        "wal_id": wal_id,
        "segments": [[s.name, s.path.stat().st_size] for s in segments],
        "lamport": report.last_lamport or 0,
        "ok": report.ok,
    }
    if not report.ok and report.corruption is not None:
        answer["problem"] = report.corruption.describe()
    return answer


def fetch(root: Path, origin: str, segment: str, offset: int, limit: int) -> dict[str, Any]:
    """Bytes of a replica's segment from ``offset`` (at most ``limit``), lz4 when that is smaller."""
    if not SEGMENT_NAME.fullmatch(segment) or offset < 0 or limit <= 0:
        raise UsageError(f"cannot fetch {segment!r} from offset {offset}")
    path = replica_dir(root, origin) / segment
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
    except FileNotFoundError:
        raise UsageError(f"{origin}/{segment}: this peer holds no such replica segment") from None
    return pack(data)


def pack(data: bytes) -> dict[str, Any]:
    """Bytes for the wire: an lz4 block when that is smaller, base64 in JSON."""
    packed = lz4.block.compress(data, store_size=False)
    codec, body = ("lz4", packed) if len(packed) < len(data) else ("raw", data)
    return {"codec": codec, "size": len(data), "data": base64.b64encode(body).decode("ascii")}


def unpack(packed: dict[str, Any]) -> bytes:
    """The bytes of :func:`pack`'s form; ValueError when they are not what it says."""
    body = base64.b64decode(packed["data"], validate=True)
    size = int(packed["size"])
    if packed["codec"] == "lz4":
        data = lz4_decode(body, size)
    elif packed["codec"] == "raw":
        data = body
    else:
        raise ValueError(f"unknown codec {packed['codec']!r}")
    if len(data) != size:
        raise ValueError(f"{len(data)} bytes decoded, {size} announced")
    return data
