"""``haios wal import DIR --node NAME``: keep an archived WAL of a decommissioned node in the
desired-state repo, after checking it against the node's tombstone (SPEC §7).

The archive must verify as a WAL (CRC chain, Lamport order), hold records of NAME only, and — when
NAME's clock entry was pruned — end exactly where the tombstone says: its last record carries the
tombstone's counter and clock hash. A log that does not is FORENSIC_MISMATCH: the alert
``forensic_mismatch`` is raised and committed, the command exits 5, and nothing of the log is kept.
One that passes is copied to ``archive/<NAME>/wal/`` and committed, with the hash of its bytes as
the commit's observed hash. The same check guards a node that rejoins under a tombstoned name
(:func:`check_tombstone`, called by ``haios node rejoin``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import alerts, audit
from ..clock import wall_clock
from ..config import load_repo
from ..errors import ConfigError, ForensicMismatch, UsageError, VerificationError
from ..events import Sink, make
from ..fsutil import atomic_write, fsync_dir, makedirs_durable
from ..layout import ALERTS_DIR
from ..recovery import clockgc
from ..vclock import Event, VClock, describe_clock
from ..wal import read_records
from ..wal.reader import list_segments

ARCHIVE_DIR = "archive"


@dataclass
class ImportResult:
    node: str
    records: int
    first_lamport: int
    last_lamport: int
    last_vc: dict[str, int]
    tombstone: str  # "matches", or why it was not checked
    path: str
    outcome: str  # "imported" or "already imported"
    commit: str | None = None
    segments: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "haios-wal-import/v1",
            "node": self.node,
            "records": self.records,
            "first_lamport": self.first_lamport,
            "last_lamport": self.last_lamport,
            "last_vc": self.last_vc,
            "tombstone": self.tombstone,
            "path": self.path,
            "segments": self.segments,
            "outcome": self.outcome,
            "commit": self.commit,
            "exit_code": 0,
        }


def check_tombstone(
    repo: Path, node: str, last: Callable[[], Event | None], what: str, now: float, emit: Sink | None = None
) -> str:
    """Check the last own event of a log that comes back under ``node``'s name (``last`` reads it,
    only when there is a tombstone to check) against its tombstone; returns "matches" or why it
    was not checked. A mismatch raises the ``forensic_mismatch`` alert, commits it, and raises
    ForensicMismatch (exit 5)."""
    try:
        stones = clockgc.load(repo)
    except ConfigError as exc:
        raise VerificationError(
            f"{what}: cannot be checked against {node}'s tombstone: {exc.message}", hint=exc.hint
        ) from None
    stone = stones.get(node)
    if stone is None:
        return "no tombstone: its clock entry was never pruned"
    if stone.revived_at is not None:
        return "its tombstone was matched by an earlier rejoin"
    try:
        clockgc.check_log(stone, last())
    except ForensicMismatch as exc:
        message = f"FORENSIC_MISMATCH: {what}: {exc.message}"
        change = alerts.raise_event(
            repo, "forensic_mismatch", message, now, node=node, key=stone.tombstone.last_vc_hash[:12]
        )
        if change is not None:
            audit.commit_run(
                repo,
                [ALERTS_DIR],
                f"FORENSIC_MISMATCH: {node}: nothing merged",
                [message, f"alert forensic_mismatch (page) raised: {message}"],
                [],
                stone.tombstone.last_vc_hash,
            )
        if emit is not None:
            emit(make("forensic_mismatch", node=node, why=message))
        raise ForensicMismatch(
            message,
            hint=f"nothing of it was merged; compare it with {node}'s tombstone in status/vclock-tombstones.yaml",
        ) from None
    return "matches"


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def import_wal(
    repo: Path | str, directory: Path | str, node: str, *, now: float | None = None, emit: Sink | None = None
) -> ImportResult:
    path, source = Path(repo), Path(directory)
    clock = wall_clock(now)
    config = load_repo(path)
    member = config.desired.membership.get(node)
    if member is None or member.status != "decommissioned":
        raise UsageError(
            f"{node}: not a decommissioned member (desired/state.yaml); 'wal import' keeps archived WALs of "
            "decommissioned nodes only",
            hint="a live node's WAL is on the node: 'haios wal inspect' reads it there",
        )
    if not source.is_dir():
        raise UsageError(f"{source}: not a directory of WAL segments")
    first = last = None
    count = 0
    for record in read_records(source):  # verifies the CRC chain and the Lamport order (exit 5 if not)
        owner = record.payload.get("node")
        if owner != node:
            raise VerificationError(
                f"{source}: the record at lamport {record.lamport} is {str(owner)[:64]!r}'s, not {node}'s",
                hint=f"import only a WAL that {node} wrote",
            )
        first = record if first is None else first
        last = record
        count += 1
    if first is None or last is None:
        raise UsageError(f"{source}: holds no WAL record")
    vc = last.payload.get("vc")
    clock_of_last = VClock.from_json(vc) if isinstance(vc, dict) else VClock()
    last_event = Event(node, last.lamport, clock_of_last)
    verdict = check_tombstone(
        path, node, lambda: last_event, f"the archived WAL {source.name} of {node}", clock(), emit
    )
    segments = [s.path for s in list_segments(source)]
    target = path / ARCHIVE_DIR / node / "wal"
    digest = _digest(segments)
    result = ImportResult(
        node,
        count,
        first.lamport,
        last.lamport,
        clock_of_last.to_json(),
        verdict,
        target.relative_to(path).as_posix(),
        "imported",
        segments=[s.name for s in segments],
    )
    if target.is_dir():
        held = sorted(target.iterdir())
        if [p.name for p in held] == result.segments and _digest(held) == digest:
            result.outcome = "already imported"
            return result
        raise VerificationError(
            f"{target}: an archive of {node} is already kept and differs from {source}",
            hint="compare the two; the repo's history keeps the one imported first",
        )
    staging = target.with_name(f".wal-{digest[:12]}.tmp")  # a copy cut short is never taken for the archive
    shutil.rmtree(staging, ignore_errors=True)
    makedirs_durable(staging)
    for segment in segments:
        atomic_write(staging / segment.name, segment.read_bytes())
    os.rename(staging, target)
    fsync_dir(target.parent)
    result.commit = audit.commit_run(
        path,
        [result.path],
        f"haios wal import {node}: {count} records",
        [
            f"archived WAL of {node}: {count} records, lamport {first.lamport}..{last.lamport}, "
            f"{len(segments)} segment{'s' if len(segments) != 1 else ''}",
            f"last clock: {describe_clock(clock_of_last)}",
            f"tombstone: {verdict}",
        ],
        [],
        digest,
    )
    return result
