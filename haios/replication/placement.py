"""Where each node's WAL stream is replicated, kept by reconcile in ``status/replication.yaml``.

Every reconcile run carries the placement forward for the current members (active, not evicted)
with :func:`haios.cluster.ring.advance` — new members placed at once, departed ones dropped, every
other move only after the sticky window and at most a quarter of the streams per window — and tells
each origin whose peers changed its new group (the node records it as a reconfiguration). An origin
that cannot be told now is remembered in ``unpushed`` and told on a later run. The file is part of
the run's audit commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cluster.ring import Placement, advance
from ..config.model import RepoConfig
from ..controlfile import dump_mapping
from ..errors import ConfigError, HaiosError
from ..fsutil import atomic_write, makedirs_durable

PLACEMENT_FILE = "status/replication.yaml"


@dataclass
class PlacementRun:
    moved: list[str] = field(default_factory=list)  # origins whose peers changed this run
    told: list[str] = field(default_factory=list)  # origins that now know their group
    unpushed: dict[str, str] = field(default_factory=dict)  # origin -> why it could not be told

    @property
    def changed(self) -> bool:
        return bool(self.moved or self.told or self.unpushed)

    def lines(self) -> list[str]:
        out = [f"replica placement: {', '.join(self.moved)} moved"] if self.moved else []
        out += [f"replica group of {o} not pushed yet: {why}" for o, why in sorted(self.unpushed.items())]
        return out


def load(repo: Path) -> tuple[Placement | None, list[str]]:
    path = repo / PLACEMENT_FILE
    if not path.exists():
        return None, []
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
        placement = Placement.from_dict(data)
    except (OSError, YAMLError, UnicodeDecodeError, AssertionError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not readable ({' '.join(str(exc).split()) or type(exc).__name__})",
            hint=f"restore it from git (git checkout -- {PLACEMENT_FILE})",
        ) from None
    return placement, [str(o) for o in data.get("unpushed") or []]


def save(repo: Path, placement: Placement, unpushed: list[str]) -> None:
    makedirs_durable((repo / PLACEMENT_FILE).parent)
    body: dict[str, Any] = {
        "apiVersion": "haios/v1",
        "kind": "ReplicaPlacement",
        **placement.as_dict(),
        "unpushed": sorted(unpushed),
    }
    atomic_write(repo / PLACEMENT_FILE, dump_mapping(body))


def sync(repo: Path, config: RepoConfig, members: list[str], transport: Any, now: float) -> PlacementRun:
    """Carry the placement forward to ``now`` and tell the origins whose peers changed."""
    run = PlacementRun()
    old, unpushed = load(repo)
    t = config.thresholds
    placement, moved = advance(
        old or Placement(),
        members,
        config.cluster.replication.replicas,
        now,
        window=t.sticky_window,
        fraction=t.max_migration_fraction,
    )
    run.moved = [o for o in moved if old is None or old.streams.get(o) != placement.streams.get(o)]
    if old is None:
        run.moved = sorted(placement.streams)
    pending = sorted((set(run.moved) | set(unpushed)) & set(placement.streams))
    for origin in pending:
        group = [origin, *placement.streams[origin]]
        try:
            transport.call(origin, {"op": "replication", "group": group})
            run.told.append(origin)
        except HaiosError as exc:
            run.unpushed[origin] = exc.one_line()
    if old is None or placement != old or sorted(run.unpushed) != sorted(unpushed):
        save(repo, placement, list(run.unpushed))
    return run
