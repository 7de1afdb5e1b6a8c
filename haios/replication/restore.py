"""Rebuild a node's WAL from the copies its replica peers hold (SPEC §6.1).

Used when the node's own WAL is lost (the directory is gone or empty although the node has committed
transitions) or corrupt mid-log. Every reachable peer is asked for its replica of the node; each copy
is verified where it lies, and the longest one that verifies is fetched into a temporary directory,
verified again here, and only then swapped in. The WAL it replaces, if any, is kept beside it as
``wal.lost.N`` — never deleted. Nothing is restored from a copy shorter than what the node still
holds intact.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import controlfile
from ..errors import BlockedError, HaiosError, TransportError
from ..fsutil import fsync_dir, makedirs_durable, write_all
from ..transport.base import Exchange
from ..wal.reader import list_segments, verify
from ..wal.writer import LOCK_NAME
from .links import open_links
from .origin import Settings
from .peer import unpack

FETCH_LIMIT = 4 * 1024 * 1024
TEMP_DIR = ".wal-restore.tmp"


@dataclass
class RestoreResult:
    node: str
    restored: bool = False
    reason: str = ""
    source: str | None = None
    segments: int = 0
    bytes: int = 0
    last_lamport: int | None = None
    kept: str | None = None  # where the replaced WAL was moved
    peers: dict[str, Any] = field(default_factory=dict)  # what each peer said

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "restored": self.restored,
            "reason": self.reason,
            "source": self.source,
            "segments": self.segments,
            "bytes": self.bytes,
            "last_lamport": self.last_lamport,
            "kept": self.kept,
            "peers": self.peers,
        }


def wal_damage(root: Path) -> tuple[str | None, int]:
    """Why the node's WAL needs restoring ("missing" / "corrupt: ..."), or None; and its last good Lamport."""
    wal = root / "wal"
    if not list_segments(wal):
        state, _ = controlfile.read_mapping(root / "state.txt")
        return ("missing" if state.get("wal_cursor") else None), 0
    report = verify(wal, jobs=1)
    if report.ok or (report.corruption is not None and report.corruption.torn_tail):
        return None, report.last_lamport or 0
    assert report.corruption is not None
    return f"corrupt: {report.corruption.describe()}", report.last_lamport or 0


def _fetch(link: Exchange, node: str, segments: list[list[Any]], target: Path) -> int:
    total = 0
    for name, size in segments:
        fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            offset = 0
            while offset < int(size):
                limit = min(FETCH_LIMIT, int(size) - offset)
                answer = link.request(
                    {"op": "replica_fetch", "origin": node, "segment": name, "offset": offset, "limit": limit}
                )
                try:
                    data = unpack(answer)
                except (KeyError, TypeError, ValueError) as exc:
                    raise TransportError(f"{link.name}: a bad answer fetching {node}/{name}: {exc}") from None
                if not data:
                    raise HaiosError(f"{link.name}: the replica of {node}/{name} ended at {offset}, not {size}")
                write_all(fd, data)
                offset += len(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        total += int(size)
    fsync_dir(target)
    return total


def restore_wal(
    root: Path, *, links: dict[str, Exchange] | None = None, force: bool = False, link_timeout: float = 10.0
) -> RestoreResult:
    """Restore the node's WAL from its replicas if it is missing or corrupt (or always, with ``force``
    when a replica is longer than the local WAL)."""
    state, _ = controlfile.read_mapping(root / "state.txt")
    node = str(state["node"])
    result = RestoreResult(node)
    damage, local_last = wal_damage(root)
    if damage is None and not force:
        result.reason = "the WAL is intact"
        return result
    own = links
    if own is None:
        policy, _ = controlfile.read_mapping(root / "policy")
        settings = Settings.for_node(root, policy)
        if not settings.on:
            raise BlockedError(
                f"{root / 'wal'}: {damage or 'restore requested'}, and replication is off: no replica to restore from",
                hint=f"'haios wal repair' keeps what can be kept (see 'haios wal verify {root / 'wal'}')",
            )
        own = open_links(node, settings.peers, base=root, timeout=link_timeout)
    try:
        best: tuple[int, str, list[list[Any]]] | None = None
        for name, link in sorted(own.items()):
            try:
                answer = link.request({"op": "replica_status", "origin": node, "verify": True})
            except HaiosError as exc:
                result.peers[name] = {"error": exc.one_line()}
                continue
            result.peers[name] = {k: answer.get(k) for k in ("lamport", "ok", "problem") if k in answer}
            if not answer.get("segments") or not answer.get("ok"):
                continue
            lamport = int(answer.get("lamport") or 0)
            if best is None or lamport > best[0]:
                best = (lamport, name, answer["segments"])
        if best is None or best[0] < local_last or (best[0] == local_last and damage is None):
            if best:
                have = f"the best replica ends at lamport {best[0]}"
            else:
                said = "; ".join(
                    f"{p}: {v.get('error') or v.get('problem') or 'none'}" for p, v in result.peers.items()
                )
                have = f"no peer holds a verified replica ({said or 'no peers'})"
            raise BlockedError(
                f"{node}: {damage or 'restore requested'}; {have}, the node's own WAL at lamport {local_last}",
                hint="bring the replica peers back ('haios doctor'), then run this again",
            )
        temp = root / TEMP_DIR
        if temp.exists():
            shutil.rmtree(temp)  # a restore that died half way: only ever a copy
        makedirs_durable(temp)
        result.bytes = _fetch(own[best[1]], node, best[2], temp)
        report = verify(temp, jobs=1)
        if not report.ok or (report.last_lamport or 0) != best[0]:
            raise BlockedError(
                f"{node}: the copy fetched from {best[1]} does not verify here "
                f"({report.corruption.describe() if report.corruption else f'ends at {report.last_lamport}'})",
                hint="run this again; if it keeps failing, check that peer's replica ('haios doctor')",
            )
        _swap(root, temp, result)
        result.restored, result.source, result.segments = True, best[1], len(best[2])
        result.last_lamport = best[0]
        result.reason = damage or "a longer replica"
        return result
    finally:
        if links is None:
            for link in own.values():
                link.close()


def _swap(root: Path, temp: Path, result: RestoreResult) -> None:
    """Put the verified copy in place of ``wal/`` (kept as ``wal.lost.N``), under the writer lock."""
    wal = root / "wal"
    makedirs_durable(wal)
    fd = os.open(wal / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BlockedError(f"{wal}: a writer has the WAL open; stop it before restoring") from None
        n = 0
        while (root / f"wal.lost.{n}").exists():
            n += 1
        kept = root / f"wal.lost.{n}"
        os.rename(wal, kept)
        os.rename(temp, wal)
        fsync_dir(root)
        result.kept = kept.name if list_segments(kept) else None
        if result.kept is None:
            shutil.rmtree(kept)  # it held no segment: nothing worth keeping
    finally:
        os.close(fd)
