"""The ``fence`` control file (SPEC §2.5): per shard, the highest fencing token the node accepted."""

from __future__ import annotations

from pathlib import Path

from .. import controlfile
from ..config.model import PHASES
from ..errors import FencedError, VersionConflict

POLICY_SHARD = "policy"  # the pushes of the compiled desired state are fenced on a shard of their own
SHARDS = (*PHASES, POLICY_SHARD)  # recovery locks are sharded per phase (SPEC §4.6)


def check_fence(root: Path, shard: str, token: int, *, attempts: int = 20) -> int:
    """Accept ``token`` for ``shard`` or raise FencedError if a higher one was already accepted.

    An equal token is accepted again (a reconciler resuming its own steps); a higher one is recorded.
    Returns the highest accepted token. Safe against concurrent callers (versioned writes).
    """
    if shard not in SHARDS:
        raise ValueError(f"unknown shard {shard!r}")
    path = root / "fence"
    for _ in range(attempts):
        body, version = controlfile.read_mapping(path)
        shards = dict(body.get("shards") or {})
        highest = int(shards.get(shard, 0))
        if token < highest:
            raise FencedError(f"{root}: fencing token {token} for shard {shard} refused; token {highest} was accepted")
        if token == highest:
            return highest
        shards[shard] = token
        try:
            controlfile.write_mapping(path, {**body, "shards": shards}, expected_version=version)
            return token
        except VersionConflict:
            continue  # someone else wrote first: read again and decide again
    raise FencedError(f"{root}: could not record fencing token {token} for shard {shard} (too much contention)")
