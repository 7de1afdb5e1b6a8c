"""The WAL's byte layout, format version 1 (documented in docs/wal-format.md).

Everything here is pure: encoding and decoding of segment headers and records, no I/O.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..errors import InputError, SegmentHeaderError
from ..untrusted import json_object, load_json

FORMAT_VERSION = 1
MAGIC = b"HAIOSWAL"

# Segment header (64 bytes, little-endian): magic[8] version:u16 flags:u16 header_size:u32 seq:u64
# first_lamport:u64 wal_id:u64 salt:u32 prev_crc:u32 prev_lamport:u64 header_crc:u32 pad[4].
# header_crc covers the first 56 bytes.
SEGMENT_LAYOUT = struct.Struct("<8sHHIQQQIIQI4x")
SEGMENT_HEADER_SIZE = SEGMENT_LAYOUT.size  # 64

# Record header (32 bytes, little-endian): crc:u32 length:u32 type:u8 flags:u8 reserved:u16 salt:u32
# lamport:u64 prev_crc:u32 raw_length:u32, then `length` payload bytes. crc covers bytes 4..32+length.
RECORD_HEADER = struct.Struct("<IIBBHIQII")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 32

FLAG_LZ4 = 0x01
FLAG_JUMP = 0x02  # the Lamport index was merged with a peer's and may exceed previous + 1
KNOWN_FLAGS = FLAG_LZ4 | FLAG_JUMP

MAX_PAYLOAD = 16 * 1024 * 1024
"""Largest stored (and decoded) payload of one record."""

SEGMENT_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.wal")
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024


class RecordType(IntEnum):
    """Record types (SPEC §2.3). Values are part of the on-disk format."""

    BEGIN_PHASE = 1
    INTENT = 2
    SIDE_EFFECT = 3
    SIDE_EFFECT_DONE = 4
    STEP = 5
    PREPARE = 6
    COMMIT_PHASE = 7
    ABORT_PHASE = 8
    COMPENSATED = 9
    RECOVERY = 10
    CHECKPOINT = 11
    EVENT = 12


DURABLE_TYPES = frozenset(
    {RecordType.BEGIN_PHASE, RecordType.PREPARE, RecordType.COMMIT_PHASE, RecordType.ABORT_PHASE, RecordType.RECOVERY}
)
"""Types that are always synced before ``append`` returns, whatever the caller asks (SPEC §2.3)."""

PHASES: tuple[str, ...] = ("ANALYZE", "BLUEPRINT", "CONSTRUCT", "VALIDATE", "IDLE")
"""The five phases of the loop, in order: the only ones a record's ``phase`` can name."""

REQUIRED_FIELDS: dict[RecordType, tuple[str, ...]] = {
    RecordType.BEGIN_PHASE: ("snapshot", "participants"),
    RecordType.INTENT: ("seq", "op", "path", "expected_version", "sha256"),
    RecordType.SIDE_EFFECT: ("key", "kind", "params", "compensator", "cost"),
    RecordType.SIDE_EFFECT_DONE: ("key", "result"),
    RecordType.STEP: ("name", "outcome"),
    RecordType.PREPARE: ("intent_count", "digest"),
    RecordType.COMMIT_PHASE: ("digest",),
    RecordType.ABORT_PHASE: ("reason",),
    RecordType.COMPENSATED: ("key", "result"),
    RecordType.RECOVERY: ("trace_id", "token", "shard", "step", "outcome"),
    RecordType.CHECKPOINT: ("lamport", "offsets"),
    RecordType.EVENT: ("name", "vc"),
}
"""Type-specific fields every record of the type must carry (besides node, g, phase, trace_id, ts, vc)."""


def segment_name(seq: int, first_lamport: int) -> str:
    return f"{seq:016x}-{first_lamport:016x}.wal"


@dataclass(frozen=True)
class SegmentHeader:
    seq: int
    first_lamport: int
    wal_id: int
    salt: int
    prev_crc: int  # CRC of the last record before this segment (0 for the first segment)
    prev_lamport: int  # Lamport index of that record (first_lamport - 1 unless a jump follows)

    def encode(self) -> bytes:
        body = SEGMENT_LAYOUT.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            SEGMENT_HEADER_SIZE,
            self.seq,
            self.first_lamport,
            self.wal_id,
            self.salt,
            self.prev_crc,
            self.prev_lamport,
            0,
        )
        crc = zlib.crc32(body[: SEGMENT_HEADER_SIZE - 8])
        return body[: SEGMENT_HEADER_SIZE - 8] + struct.pack("<I4x", crc)


def decode_segment_header(data: bytes) -> SegmentHeader:
    if len(data) < SEGMENT_HEADER_SIZE:
        raise SegmentHeaderError(f"segment header is {len(data)} bytes, expected {SEGMENT_HEADER_SIZE}")
    magic, version, flags, size, seq, first, wal_id, salt, prev_crc, prev_lamport, _ = SEGMENT_LAYOUT.unpack_from(data)
    if magic != MAGIC:
        raise SegmentHeaderError("not a haios WAL segment (bad magic)")
    (crc,) = struct.unpack_from("<I", data, SEGMENT_HEADER_SIZE - 8)
    if zlib.crc32(data[: SEGMENT_HEADER_SIZE - 8]) != crc:
        raise SegmentHeaderError("segment header CRC mismatch")
    if version != FORMAT_VERSION:
        raise SegmentHeaderError(f"unsupported WAL format version {version} (this haios reads {FORMAT_VERSION})")
    if flags != 0 or size != SEGMENT_HEADER_SIZE:
        raise SegmentHeaderError("segment header has unknown flags or size")
    return SegmentHeader(seq, first, wal_id, salt, prev_crc, prev_lamport)


def encode_payload(payload: dict[str, Any]) -> tuple[bytes, int, int]:
    """JSON-encode ``payload``; lz4-compress it when that is smaller. Returns (stored, raw_length, flags)."""
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(raw) > MAX_PAYLOAD:
        raise ValueError(f"record payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD}")
    if len(raw) >= 64:
        import lz4.block

        packed: bytes = lz4.block.compress(raw, store_size=False)
        if len(packed) < len(raw):
            return packed, len(raw), FLAG_LZ4
    return raw, len(raw), 0


def encode_record(
    rtype: int, stored: bytes, raw_length: int, flags: int, salt: int, lamport: int, prev_crc: int
) -> tuple[bytes, int]:
    """The record's bytes and its CRC. The CRC covers everything after the CRC field itself."""
    header = RECORD_HEADER.pack(0, len(stored), rtype, flags, 0, salt, lamport, prev_crc, raw_length)
    crc = zlib.crc32(stored, zlib.crc32(memoryview(header)[4:]))
    return struct.pack("<I", crc) + header[4:] + stored, crc


def lz4_decode(stored: bytes, raw_length: int) -> bytes:
    """lz4 block bytes back to the ``raw_length`` bytes they hold: the one place haios decodes lz4
    (WAL payloads, replication chunks). Anything lz4 refuses is a ValueError, lz4's error its cause."""
    import lz4.block

    try:
        raw: bytes = lz4.block.decompress(stored, uncompressed_size=raw_length)
    except Exception as exc:  # lz4 raises LZ4BlockError (not exported in a stable place)
        raise ValueError(f"lz4 payload does not decode: {exc}") from exc
    return raw


def decode_payload(stored: bytes | memoryview, raw_length: int, flags: int) -> bytes:
    """The raw JSON bytes of a stored payload; raises ValueError when it does not decode to raw_length."""
    if not flags & FLAG_LZ4:
        if len(stored) != raw_length:
            raise ValueError(f"payload length {len(stored)} differs from its recorded length {raw_length}")
        return bytes(stored)
    if raw_length > MAX_PAYLOAD:
        raise ValueError(f"decoded length {raw_length} exceeds the limit {MAX_PAYLOAD}")
    if raw_length > lz4_bound(len(stored)):
        raise ValueError(f"declares {raw_length} bytes from {len(stored)} compressed: more than lz4 can expand")
    raw = lz4_decode(bytes(stored), raw_length)
    if len(raw) != raw_length:
        raise ValueError(f"lz4 payload decodes to {len(raw)} bytes, not {raw_length}")
    return raw


def lz4_bound(stored: int) -> int:
    """The most bytes an lz4 block of ``stored`` bytes can decode to (a match token expands at most
    255-fold); a record that declares more is corrupt, whatever its CRC says."""
    return 255 * stored + 64


def parse_json(raw: bytes) -> dict[str, Any]:
    """A payload's JSON object; ValueError when it is not one haios can have written (not JSON, not
    an object, nested deeper than 64 levels, an integer out of 64 bits)."""
    if not raw:
        return {}
    plain = json_object(raw)
    if plain is not None:
        return plain
    try:
        value = load_json(raw, "payload")
    except InputError as exc:
        raise ValueError(exc.reason) from None
    if not isinstance(value, dict):
        raise ValueError("payload is not a JSON object")
    return value
