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
