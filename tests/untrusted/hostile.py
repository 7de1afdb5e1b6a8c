"""The hostile corpus and where it goes: every file of ``corpus/`` planted in every place haios
reads, and what each command must make of it (a value, or the documented error naming the file)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from haios import controlfile
from haios.errors import HaiosError

CORPUS = Path(__file__).parent / "corpus"
TEXT = sorted(p for p in CORPUS.iterdir() if p.suffix in (".yaml", ".json", ".bin"))
KEYS = sorted(CORPUS.glob("*.pub"))
SIGNATURES = sorted(CORPUS.glob("*.sig"))

# files every decision depends on: a bad one is an error for the run, naming it
CORE = ("haios.yaml", "desired/state.yaml", "policies/thresholds.yaml")
DESIRED = (
    *CORE,
    "policies/budget.yaml",
    "policies/fx.yaml",
    "policies/rbac.yaml",
    "playbooks/fakecloud-vm.yaml",
    "overrides/2-analyze-000000000000.yaml",
    "schemas/hostile.schema.json",
)
STATUS = (
    "status/sel/breakers.yaml",
    "status/sel/swings.yaml",
    "status/membership.yaml",
    "status/overrides/applied.yaml",
    "status/alerts/hostile.yaml",
    "status/observed/node-1.json",
    "status/observed/runs.json",
    "status/observed/pass.json",
    "status/observed/findings.json",
    "status/replication.yaml",
    "status/cluster.yaml",
    "status/recoveries/1-idle-000000000000.yaml",
)
NODE_FILES = ("state.txt", "heartbeat", "gossip", "fence", "policy", "exec_status_1.txt", "replication")


@contextmanager
def planted(repo: Path, rel: str, data: bytes) -> Iterator[Path]:
    """``data`` at ``repo/rel`` for the duration, the old content (or its absence) restored after."""
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)
    try:
        yield path
    finally:
        if path.is_symlink() or path.exists():
            path.unlink()
        if old is not None:
            path.write_bytes(old)


def as_control_file(data: bytes) -> bytes:
    """``data`` behind a valid integrity footer, as an attacker who can compute SHA-256 writes it
    (the body parser is what is tried), or the raw bytes when they cannot be a body at all."""
    body = data if data.endswith(b"\n") or not data else data + b"\n"
    try:
        return controlfile.encode(body, 7)
    except (ValueError, UnicodeDecodeError):
        return data


def outcome(call: object) -> HaiosError | None:
    """Run ``call()``; the HaiosError it raised, or None. Any other exception fails the test."""
    assert callable(call)
    try:
        call()
    except HaiosError as exc:
        return exc
    return None


def fresh_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target
