"""Helpers for WAL tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from haios.wal import Record

MakeWal = Callable[..., tuple[Path, list[Record]]]


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".wal"))


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def damage(directory: Path, action: str, where: float, size: int, mask: int) -> None:
    """One kind of damage to one of the first three segments, at a relative position: a bit pattern
    flipped, the rest cut off, a run of zeros, random bytes appended (any other action: none)."""
    import os

    seg = segments(directory)[min(int(where * 3), len(segments(directory)) - 1)]
    data = bytearray(seg.read_bytes())
    pos = int(where * (len(data) - 1))
    if action == "flip":
        data[pos] ^= mask
    elif action == "truncate":
        del data[pos:]
    elif action == "zero":
        data[pos : pos + size] = bytes(len(data[pos : pos + size]))
    elif action == "append":
        data += os.urandom(size)
    seg.write_bytes(bytes(data))
