"""Hard-link snapshots of ``data/`` (SPEC §2.1, §2.4): constant in bytes, linear only in file count.

Files in ``data/`` are only ever replaced (written to a temporary file and renamed), never modified in
place, so a hard link keeps the old content for as long as the snapshot lives.

The node's data manifest is part of the snapshot: ``snapshots/<name>.manifest`` is a hard link to
the manifest as it was (absent when there was none), made before the snapshot's directory is renamed
into place. A snapshot is built in ``snapshots/.<name>.tmp`` and renamed into place once every
directory in it is fsynced, so ``snapshots/<name>`` exists only when complete. Restoring makes ``data/`` equal to the
snapshot file by file (by inode), then puts the manifest back, which is idempotent: a restore interrupted by a crash is simply
run again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..errors import StorageError
from ..fsutil import fsync_dir
from .manifest import MANIFEST


def snapshot_name(g: int, phase: str) -> str:
    return f"{g}-{phase}"


def _manifest_of(root: Path, name: str) -> Path:
    return root / "snapshots" / f"{name}.{MANIFEST}"


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src``, replacing it atomically."""
    if _same_file(src, dst):
        return  # (renaming a link over another link to the same file would do nothing)
    tmp = dst.parent / f".{dst.name}.link"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.link(src, tmp, follow_symlinks=False)
    os.rename(tmp, dst)


def _link_tree(src: Path, dst: Path) -> int:
    """Recreate ``src`` under ``dst``: directories made, files hard-linked, symlinks copied as links.

    Works on directory descriptors (no path lookups per file) and fsyncs every directory it fills.
    Returns the bytes written: the directories' sizes and the symlinks' targets.
    """
    written = 0
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    os.mkdir(dst)
    stack = [(str(src), str(dst))]
    while stack:
        source, target = stack.pop()
        sfd, dfd = os.open(source, flags), os.open(target, flags)
        try:
            with os.scandir(sfd) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        link = os.readlink(entry.name, dir_fd=sfd)
                        os.symlink(link, entry.name, dir_fd=dfd)
                        written += len(os.fsencode(link))
                    elif entry.is_dir(follow_symlinks=False):
                        os.mkdir(entry.name, dir_fd=dfd)
                        stack.append((os.path.join(source, entry.name), os.path.join(target, entry.name)))
                    else:
                        os.link(entry.name, entry.name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            os.fsync(dfd)
            written += os.fstat(dfd).st_size
        finally:
            os.close(sfd)
            os.close(dfd)
    return written


def take(root: Path, name: str) -> tuple[Path, int]:
    """Snapshot ``root/data`` as ``root/snapshots/<name>``, replacing an incomplete or stale one.
    Returns the snapshot and the bytes it took on disk (its directories and symlinks: files are
    hard links, which write no data) — for ``max_io_overhead_ratio``."""
    snapshots = root / "snapshots"
    final = snapshots / name
    tmp = snapshots / f".{name}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        written = _link_tree(root / "data", tmp)
        if os.path.lexists(root / MANIFEST):
            _link_over(root / MANIFEST, _manifest_of(root, name))
        elif os.path.lexists(_manifest_of(root, name)):
            os.unlink(_manifest_of(root, name))
        os.rename(tmp, final)
        fsync_dir(snapshots)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"{final}: snapshot failed: {os.strerror(exc.errno or 0)}") from exc
    return final, written


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def restore(root: Path, name: str) -> int:
    """Make ``root/data`` equal to ``root/snapshots/<name>``; return how many entries changed."""
    snap = root / "snapshots" / name
    data = root / "data"
    if not snap.is_dir():
        raise StorageError(f"{snap}: snapshot is missing; cannot roll back data/ without it")
    changed = 0
    try:
        # 1. everything in data/ that the snapshot does not have goes (deepest first)
        for dirpath, dirnames, filenames in os.walk(data, topdown=False):
            rel = Path(dirpath).relative_to(data)
            for name_ in filenames:
                if not os.path.lexists(snap / rel / name_) or (snap / rel / name_).is_dir():
                    os.unlink(Path(dirpath) / name_)
                    changed += 1
            for name_ in dirnames:
                path = Path(dirpath) / name_
                if path.is_symlink():
                    if not os.path.lexists(snap / rel / name_):
                        os.unlink(path)
                        changed += 1
                elif not (snap / rel / name_).is_dir() or (snap / rel / name_).is_symlink():
                    shutil.rmtree(path)
                    changed += 1
            fsync_dir(dirpath)
        # 2. everything in the snapshot is linked back where it is not the same inode already
        for dirpath, dirnames, filenames in os.walk(snap):
            rel = Path(dirpath).relative_to(snap)
            target_dir = data / rel
            for name_ in dirnames:
                if not (target_dir / name_).is_dir():
                    (target_dir / name_).mkdir()
                    changed += 1
            for name_ in filenames:
                src, dst = Path(dirpath) / name_, target_dir / name_
                if _same_file(src, dst):
                    continue
                tmp = target_dir / f".{name_}.restore"
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                if src.is_symlink():
                    os.symlink(os.readlink(src), tmp)
                else:
                    os.link(src, tmp, follow_symlinks=False)
                os.rename(tmp, dst)
                changed += 1
            fsync_dir(target_dir)
        # 3. the manifest as it was when the snapshot was taken
        kept = _manifest_of(root, name)
        if os.path.lexists(kept):
            if not _same_file(kept, root / MANIFEST):
                _link_over(kept, root / MANIFEST)
                changed += 1
        elif os.path.lexists(root / MANIFEST):
            os.unlink(root / MANIFEST)
            changed += 1
        fsync_dir(root)
    except OSError as exc:
        raise StorageError(f"{data}: restore from {snap} failed: {os.strerror(exc.errno or 0)}") from exc
    return changed


def drop(root: Path, name: str) -> None:
    """Delete a snapshot that is no longer needed (after the phase committed or was rolled back)."""
    shutil.rmtree(root / "snapshots" / name, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_manifest_of(root, name))
    fsync_dir(root / "snapshots")
