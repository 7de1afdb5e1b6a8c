"""Confinement of paths to a node's ``data/`` directory (SPEC §2.1)."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from ..errors import PathEscapeError


def confine(data_dir: Path, relpath: str) -> Path:
    """The absolute path of ``relpath`` inside ``data_dir``; PathEscapeError if it would leave it.

    Refused: empty paths, absolute paths, ``..`` or ``.`` parts, NUL bytes, and any existing part
    that is a symlink (so no link is ever followed out of the root).
    """
    if not relpath or "\x00" in relpath:
        raise PathEscapeError(f"invalid path {relpath!r}")
    pure = PurePosixPath(relpath)
    if pure.is_absolute():
        raise PathEscapeError(f"{relpath}: absolute paths are not allowed")
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise PathEscapeError(f"{relpath}: '..', '.' and empty parts are not allowed")
    current = data_dir
    for part in parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break
        if stat.S_ISLNK(mode):
            raise PathEscapeError(f"{relpath}: {current.relative_to(data_dir)} is a symlink")
    return data_dir.joinpath(*parts)
