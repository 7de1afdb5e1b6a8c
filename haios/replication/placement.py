"""Where each node's WAL stream is replicated, kept by reconcile in ``status/replication.yaml``.

Every reconcile run carries the placement forward for the current members (active, not evicted)
with :func:`haios.replication.ring.advance` — new members placed at once, departed ones dropped, every
other move only after the sticky window and at most a quarter of the streams per window — and tells
each origin whose peers changed its new group (the node records it as a reconfiguration). An origin
that cannot be told now is remembered in ``unpushed`` and told on a later run. The file is part of
the run's audit commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.model import RepoConfig
from ..config.yamlload import load_status
from ..controlfile import dump_mapping
from ..errors import ConfigError, HaiosError
from ..fsutil import atomic_write, makedirs_durable
from ..layout import PLACEMENT_FILE
from ..transport.base import fan_out
from .ring import Placement, advance


@dataclass
class PlacementRun:
    moved: list[str] = field(default_factory=list)  # origins whose peers changed this run
    told: list[str] = field(default_factory=list)  # origins that now know their group
    unpushed: dict[str, str] = field(default_factory=dict)  # origin -> why it could not be told
    saved: bool = False  # status/replication.yaml changed

    def lines(self) -> list[str]:
        out = [f"replica placement: {', '.join(self.moved)} moved"] if self.moved else []
        if self.told and not self.moved:
            out.append(f"replication settings told to {', '.join(self.told)}")
        out += [f"replica group of {o} not pushed yet: {why}" for o, why in sorted(self.unpushed.items())]
        return out


def settings_for(config: RepoConfig) -> dict[str, Any]:
    """What every node needs to replicate: the mode, R, how to reach each peer, and the timings."""
    if config.cluster.replication.mode == "off":
        return {"mode": "off"}
    t = config.thresholds
    return {
        **config.replication_policy(),
        "write_timeout_factor": t.write_timeout_factor,
        "permit_async_for": t.permit_async_for,
    }


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Stored:
    placement: Placement
    unpushed: list[str]
    settings_digest: str | None


def load(repo: Path) -> Stored | None:
    path = repo / PLACEMENT_FILE
    data = load_status(path, "a readable replica placement", PLACEMENT_FILE)
    if data is None:
        return None
    try:
        placement = Placement.from_dict(data)
        unpushed = [str(o) for o in data.get("unpushed") or []]
        digest = data.get("settings_digest")
    except (AssertionError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not readable ({' '.join(str(exc).split()) or type(exc).__name__})",
            hint=f"restore it from git (git checkout -- {PLACEMENT_FILE})",
        ) from None
    return Stored(placement, unpushed, None if digest is None else str(digest))


def save(repo: Path, stored: Stored) -> None:
    makedirs_durable((repo / PLACEMENT_FILE).parent)
    body: dict[str, Any] = {
        "apiVersion": "haios/v1",
        "kind": "ReplicaPlacement",
        **stored.placement.as_dict(),
        "unpushed": sorted(stored.unpushed),
        "settings_digest": stored.settings_digest,
    }
    atomic_write(repo / PLACEMENT_FILE, dump_mapping(body))


def sync(
    repo: Path, config: RepoConfig, members: list[str], transport: Any, now: float, *, parallelism: int = 1
) -> PlacementRun:
    """Carry the placement forward to ``now`` and tell the origins whose peers (or whose replication
    settings: turned on or off, R, peers' addresses, timings) changed, up to ``parallelism`` remote
    origins at once. With replication off, nodes that were told to replicate are told to stop."""
    run = PlacementRun()
    old = load(repo)
    settings = settings_for(config)
    digest = _digest(settings)
    if settings["mode"] == "off":
        if old is None or old.settings_digest == digest and not old.unpushed:
            return run
        placement = Placement()
        pending = sorted(set(old.placement.streams) | set(old.unpushed))
        requests = {o: {"op": "replication", "settings": settings} for o in pending}
    else:
        t = config.thresholds
        placement, moved = advance(
            old.placement if old else Placement(),
            members,
            config.cluster.replication.replicas,
            now,
            window=t.sticky_window,
            fraction=t.max_migration_fraction,
        )
        if old is None:
            run.moved = sorted(placement.streams)
        else:
            run.moved = [o for o in moved if old.placement.streams.get(o) != placement.streams.get(o)]
        everyone = old is None or old.settings_digest != digest
        wanted = set(placement.streams) if everyone else set(run.moved) | set(old.unpushed if old else [])
        pending = sorted(wanted & set(placement.streams))
        requests = {
            o: {"op": "replication", "group": [o, *placement.streams[o]], "settings": settings} for o in pending
        }
    told = fan_out(transport, sorted(requests), lambda o: transport.call(o, requests[o]), parallelism=parallelism)
    for origin, answer in told:
        if isinstance(answer, HaiosError):
            run.unpushed[origin] = answer.one_line()
        else:
            run.told.append(origin)
    run.told.sort()
    new = Stored(placement, sorted(run.unpushed), digest)
    if old is None or new != old:
        save(repo, new)
        run.saved = True
    return run
