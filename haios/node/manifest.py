"""What haios knows of each ``data/`` file, kept beside it in ``ROOT/data.manifest`` (a control file).

``data/`` holds the bytes a phase wrote, exactly: a consumer reads a JSON file, a binary or a file
without a trailing newline as it was written, with nothing appended. Their integrity lives in the
WAL's INTENT records (the sha256 of each write) and here: for every file haios wrote, the version it
is at (the optimistic concurrency an INTENT's ``expected_version`` refers to), its sha256 and its size,
and — for a file whose data schema sets ``requires_causal`` — the vector clock of the INTENT that
wrote it, so that no replay puts a causally older version over it.

Applying intents writes the files first, then the manifest once. A crash between the two leaves
files whose bytes are those of the INTENTs being applied while the manifest still names the old
ones, which is exactly what a replay recognises and finishes. Each INTENT also names the bytes the
phase read (``base_sha256``, None for a file that was not there): a file whose bytes are neither
those nor the INTENT's was changed behind the phase's back, and is never overwritten unseen
(:class:`DataDriftError`). A file put in data/ by hand before any phase wrote it is adopted by the
first phase that read it and wrote it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import controlfile
from ..errors import CausalOrderError, DataDriftError, HaiosError, IntegrityError, VersionConflict
from ..fsutil import atomic_write, fsync_dir, makedirs_durable
from ..vclock import VClock, describe_clock
from .paths import confine

MANIFEST = "data.manifest"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    version: int
    sha256: str
    size: int
    vc: VClock | None = None  # the clock of the INTENT that wrote it (files whose schema requires causal order)


@dataclass(frozen=True)
class Manifest:
    files: dict[str, Entry]
    version: int | None  # the control file's version (None: there is none yet)

    def version_of(self, relpath: str) -> int | None:
        entry = self.files.get(relpath)
        return None if entry is None else entry.version


def _entry(path: Path, name: object, value: object) -> tuple[str, Entry]:
    if (
        isinstance(name, str)
        and isinstance(value, list)
        and len(value) in (3, 4)
        and type(value[0]) is int
        and value[0] >= 1
        and isinstance(value[1], str)
        and len(value[1]) == 64
        and type(value[2]) is int
        and value[2] >= 0
    ):
        try:
            vc = VClock.from_json(value[3]) if len(value) == 4 else None
        except ValueError:
            raise IntegrityError(path, f"entry {name[:80]!r}: its clock is not a vector clock") from None
        return name, Entry(value[0], value[1], value[2], vc)
    raise IntegrityError(path, f"entry {str(name)[:80]!r} is not [version, sha256, size] or [..., clock]")


def load(root: Path) -> Manifest:
    """The node's manifest (empty when no phase wrote data/ yet). A damaged one is IntegrityError."""
    path = root / MANIFEST
    try:
        cf = controlfile.read(path)
    except HaiosError:
        if not os.path.lexists(path):
            return Manifest({}, None)
        raise
    try:
        body: Any = json.loads(cf.body) if cf.body else {}
    except ValueError as exc:
        raise IntegrityError(path, f"not a JSON manifest: {exc}") from exc
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, dict):
        raise IntegrityError(path, "not a manifest: no 'files' mapping")
    return Manifest(dict(_entry(path, k, v) for k, v in files.items()), cf.version)


def _row(entry: Entry) -> list[Any]:
    row: list[Any] = [entry.version, entry.sha256, entry.size]
    return row if entry.vc is None else [*row, entry.vc.to_json()]


def _store(root: Path, files: dict[str, Entry], expected_version: int | None) -> None:
    body = {"files": {k: _row(e) for k, e in sorted(files.items())}}
    controlfile.write(
        root / MANIFEST, json.dumps(body, separators=(",", ":")) + "\n", expected_version=expected_version
    )


def file_sha256(path: Path) -> str | None:
    """sha256 of a regular file's bytes; None when there is no file there (or not a regular one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _version_after(intent: dict[str, Any]) -> int:
    expected = intent["expected_version"]
    return 1 if expected is None else int(expected) + 1


def applied(manifest: Manifest, data: Path, intent: dict[str, Any]) -> bool:
    """Whether ``intent`` is already done: the manifest records it (and, for a delete, the file is gone:
    one put in data/ by hand was never in the manifest)."""
    entry = manifest.files.get(intent["path"])
    if intent["op"] == "delete":
        return entry is None and not os.path.lexists(confine(data, intent["path"]))
    return entry is not None and (entry.version, entry.sha256) == (_version_after(intent), intent["sha256"])


def write_data(target: Path, body: bytes) -> None:
    """Replace one data/ file with ``body``, atomically and durably (the bytes exactly)."""
    atomic_write(target, body)


def _intent_clock(intent: dict[str, Any]) -> VClock | None:
    try:
        return VClock.from_json(intent["vc"]) if intent.get("vc") else None
    except ValueError:
        return None


def apply(
    root: Path,
    intents: Iterable[dict[str, Any]],
    content: Callable[[dict[str, Any]], bytes],
    causal: Callable[[str], bool] | None = None,
) -> int:
    """Apply ``intents`` to ``root/data``: the files (atomic, durable), then the manifest once.

    ``content(intent)`` gives a write's bytes. Intents the manifest already records are skipped, so a
    replay after a crash finishes what the first run began. Returns how many were applied now.
    Raises VersionConflict when the manifest's version of a file is neither the expected nor the
    intended one, DataDriftError when a file's bytes are neither the manifest's nor the intent's.

    A path for which ``causal(path)`` holds keeps the vector clock of the INTENT that wrote it, and an
    intent whose clock happened before that one is refused (CausalOrderError), versions aside.
    """
    data = root / "data"
    manifest = load(root)
    files = dict(manifest.files)
    todo = [i for i in intents if not applied(manifest, data, i)]
    ordered = causal or (lambda _path: False)
    for intent in todo:
        path, expected = intent["path"], intent["expected_version"]
        target = confine(data, path)
        entry = files.get(path)
        clock = _intent_clock(intent)
        held = None if entry is None else entry.vc
        if clock is not None and held is not None and ordered(path) and clock.happened_before(held):
            raise CausalOrderError(
                f"data/{path}: the replayed version (clock {describe_clock(clock)}) happened before "
                f"the version it holds (clock {describe_clock(held)})"
            )
        actual = None if entry is None else entry.version
        if actual != expected:
            raise VersionConflict(target, expected=expected, actual=actual)
        # the bytes the phase saw when it logged the intent (older records: what the manifest names)
        base = intent.get("base_sha256", None if entry is None else entry.sha256)
        now = file_sha256(target)
        if now not in (base, intent["sha256"]) and not (intent["op"] == "delete" and now is None):
            state = "is there" if base is None else "differs from the one the phase read"
            raise DataDriftError(f"{target}: a file {state} (changed outside any phase); the phase would replace it")
    for intent in todo:
        target = confine(data, intent["path"])
        if intent["op"] == "delete":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
                fsync_dir(target.parent)
            files.pop(intent["path"], None)
        else:
            makedirs_durable(target.parent)
            body = content(intent)
            write_data(target, body)
            vc = _intent_clock(intent) if ordered(intent["path"]) else None
            files[intent["path"]] = Entry(_version_after(intent), intent["sha256"], len(body), vc)
    if todo:
        _store(root, files, manifest.version)
    return len(todo)


def set_entry(root: Path, relpath: str, entry: Entry | None) -> None:
    """Put one file's manifest entry (None: remove it), leaving the others as they are."""
    manifest = load(root)
    files = dict(manifest.files)
    if entry is None:
        files.pop(relpath, None)
    else:
        files[relpath] = entry
    _store(root, files, manifest.version)


def check(root: Path) -> list[str]:
    """What in ``data/`` disagrees with the manifest: files changed, missing or never written by a phase.

    Returns one line per file (empty: all agree). A damaged manifest is one line too.
    """
    try:
        manifest = load(root)
    except HaiosError as exc:
        return [exc.message]
    data = root / "data"
    problems: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(data):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(data).as_posix()
            if name.startswith(".") and name.endswith((".tmp", ".restore")):
                continue  # a writer's temporary file
            seen.add(rel)
            entry = manifest.files.get(rel)
            if entry is None:
                problems.append(f"data/{rel}: not written by any phase (not in the manifest)")
            elif file_sha256(path) != entry.sha256:
                problems.append(f"data/{rel}: its bytes differ from version {entry.version} that haios wrote")
    for rel in sorted(set(manifest.files) - seen):
        problems.append(f"data/{rel}: in the manifest (version {manifest.files[rel].version}) but missing")
    return problems
