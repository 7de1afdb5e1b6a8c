"""Atomic, durable file writes: the one helper every haios module writes state through.

A write goes to a temporary file in the same directory, is fsynced, renamed over the target and
the directory is fsynced (SPEC §2.2). Writers of one directory are serialised by an exclusive
``flock`` on the directory itself, which is what lets the temporary file have a fixed name: a
temporary file left behind by a writer that was killed is simply truncated by the next writer, so
nothing accumulates and nothing trips a later write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import StorageError

TEMP_SUFFIX = ".tmp"


def temp_name(name: str) -> str:
    """The fixed name of the temporary file used while replacing ``name``."""
    return f".{name}{TEMP_SUFFIX}"


def _storage_error(path: Path, action: str, exc: OSError) -> StorageError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = None
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full; free space and run the command again (the old file is intact)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "the file system refused the write; fix permissions or remount read-write"
    return StorageError(f"{path}: could not {action}: {reason}", hint=hint)


def fsync_dir(directory: Path | str) -> None:
    """fsync a directory so that a rename or create inside it is durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def locked_dir(directory: Path | str) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``directory``; yields the directory's file descriptor."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _storage_error(Path(directory), "open the directory", exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_in_dir(
    dir_fd: int, directory: Path, name: str, data: bytes, mode: int = 0o644, *, durable: bool = True
) -> None:
    """Replace ``name`` inside the (already locked) directory ``dir_fd`` atomically (and durably).

    The caller must hold :func:`locked_dir` on the directory. ``durable=False`` skips the fsyncs: the
    replacement is still atomic, but a crash may bring the old content back (for caches only).
    """
    tmp = temp_name(name)
    target = directory / name
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
            mode,
            dir_fd=dir_fd,
        )
    except OSError as exc:
        raise _storage_error(target, "create a temporary file", exc) from exc
    try:
        try:
            write_all(fd, data)
            # An fsync error is never retried on the same descriptor: the temp file is dropped.
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the next writer truncates it anyway
            os.unlink(tmp, dir_fd=dir_fd)
        raise _storage_error(target, "write", exc) from exc
    if not durable:
        return
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise _storage_error(target, "make the rename durable (directory fsync)", exc) from exc


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp, fsync, rename, directory fsync).

    Readers see either the old content or the new one, never a mix, whatever happens to the
    writer. Raises :class:`StorageError` on any I/O failure, leaving the old file in place.
    ``durable=False`` (caches only) skips the fsyncs.
    """
    target = Path(path)
    with locked_dir(target.parent) as dir_fd:
        replace_in_dir(dir_fd, target.parent, target.name, data, mode, durable=durable)


def makedirs_durable(directory: Path | str) -> None:
    """Create ``directory`` and missing parents, fsyncing each parent that gained an entry."""
    target = Path(directory)
    missing: list[Path] = []
    cur = target
    while not cur.exists():
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    for d in reversed(missing):
        try:
            d.mkdir(exist_ok=True)
            fsync_dir(d.parent)
        except OSError as exc:
            raise _storage_error(d, "create the directory", exc) from exc
