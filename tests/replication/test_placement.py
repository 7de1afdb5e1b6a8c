"""Replica placement kept by reconcile (status/replication.yaml) and pushed to the nodes."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import Invoke
from helpers.cluster import git

from haios import controlfile
from haios.config import load_repo
from haios.errors import TransportError
from haios.replication import placement
from haios.replication.ring import Ring
from haios.sim.simulator import sim_init, sim_run
from haios.wal import read_records

T0 = 1_800_000_000.0


class Recorder:
    """Records the groups told to each origin; ``down`` origins cannot be reached."""

    def __init__(self, down: set[str] | None = None) -> None:
        self.down = down or set()
        self.told: dict[str, list[str]] = {}

    def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        if node in self.down:
            raise TransportError(f"{node}: cannot connect")
        self.told[node] = request["group"]
        return {}


class RemoteRecorder(Recorder):
    """Origins on other machines: each call waits until ``together`` calls are in flight at once."""

    all_local = False

    def __init__(self, together: int, down: set[str] | None = None) -> None:
        super().__init__(down)
        self.barrier = threading.Barrier(together, timeout=60)
        self._lock = threading.Lock()

    def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        if node not in self.down:
            self.barrier.wait()
        with self._lock:
            return super().call(node, request)


def test_remote_origins_are_told_at_once(tmp_path: Path) -> None:
    directory = sim_init(tmp_path / "c", 5, replication=True)
    config = load_repo(directory)
    members = [f"node-{i}" for i in range(1, 6)]
    recorder = RemoteRecorder(together=4, down={"node-3"})
    run = placement.sync(directory, config, members, recorder, T0, parallelism=8)
    assert run.told == ["node-1", "node-2", "node-4", "node-5"]
    assert list(run.unpushed) == ["node-3"] and "cannot connect" in run.unpushed["node-3"]
    assert set(recorder.told) == set(run.told)


def test_reconcile_places_every_stream_and_tells_the_nodes(tmp_path: Path, cli: Invoke) -> None:
    directory = sim_init(tmp_path / "c", 5, replication=True)
    assert sim_run(directory, iterations=1, seed=1, faults={}).committed == 5
    result = cli("--repo", directory, "-o", "json", "reconcile")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["placement"] == ["replica placement: node-1, node-2, node-3, node-4, node-5 moved"]
    ring = Ring([f"node-{i}" for i in range(1, 6)])
    for i in range(1, 6):
        name = f"node-{i}"
        body, _ = controlfile.read_mapping(directory / "nodes" / name / "replication")
        assert body["group"] == [name, *ring.peers(name, 3)]
    assert "status/replication.yaml" in git(directory, "show", "--stat", "--format=%s", "HEAD")
    again = cli("--repo", directory, "-o", "json", "reconcile")
    assert json.loads(again.stdout)["placement"] == [] and json.loads(again.stdout)["commit"] is None


def test_unreachable_origin_is_told_on_a_later_run(tmp_path: Path) -> None:
    directory = sim_init(tmp_path / "c", 4, replication=True)
    config = load_repo(directory)
    members = ["node-1", "node-2", "node-3", "node-4"]
    first = placement.sync(directory, config, members, Recorder(down={"node-2"}), T0)
    assert "node-2" in first.unpushed and sorted(first.told) == ["node-1", "node-3", "node-4"]
    recorder = Recorder()
    second = placement.sync(directory, config, members, recorder, T0 + 10)
    assert list(recorder.told) == ["node-2"] and second.unpushed == {}
    third = placement.sync(directory, config, members, Recorder(), T0 + 20)
    assert not third.saved and third.told == [] and third.moved == []


def test_membership_change_waits_out_the_window_then_moves_a_quarter(tmp_path: Path) -> None:
    directory = sim_init(tmp_path / "c", 8, replication=True)
    config = load_repo(directory)
    members = [f"node-{i}" for i in range(1, 9)]
    placement.sync(directory, config, members, Recorder(), T0)
    held = Counter(p for m in members for p in Ring(members).peers(m, 3))
    leaving = held.most_common(1)[0][0]  # a member that holds copies of several streams
    fewer = [m for m in members if m != leaving]
    recorder = Recorder()
    run = placement.sync(directory, config, fewer, recorder, T0 + 60)
    assert run.moved == [] and recorder.told == {}  # sticky: nothing moves inside the window
    stored = placement.load(directory)
    assert stored is not None and leaving not in stored.placement.streams  # the departed stream is dropped
    later = placement.sync(directory, config, fewer, recorder, T0 + 60 + 301)
    assert 1 <= len(later.moved) <= 7 // 4 and set(recorder.told) == set(later.moved)
    for origin in later.moved:
        assert recorder.told[origin] == [origin, *Ring(fewer).peers(origin, 3)]


def test_turning_replication_on_and_off_in_haios_yaml_reaches_existing_nodes(tmp_path: Path, cli: Invoke) -> None:
    from haios.node import Node

    directory = sim_init(tmp_path / "c", 3)  # provisioned without replication
    assert sim_run(directory, iterations=1, seed=1, faults={}).committed == 5
    config = directory / "haios.yaml"
    config.write_text(config.read_text().replace("  mode: 'off'", "  mode: sync-majority"))
    git(directory, "commit", "-qam", "replicate the WALs")
    assert cli("--repo", directory, "reconcile").exit_code == 0
    assert Node(directory / "nodes/node-1").replicator() is not None
    assert sim_run(directory, iterations=1, seed=2, faults={}).committed == 5
    copy = directory / "nodes/node-2/replicas/node-1"
    assert [r.lamport for r in read_records(copy)] == [r.lamport for r in read_records(directory / "nodes/node-1/wal")]
    config.write_text(config.read_text().replace("  mode: sync-majority", "  mode: 'off'"))
    git(directory, "commit", "-qam", "stop replicating")
    result = cli("--repo", directory, "-o", "json", "reconcile")
    assert result.exit_code == 0 and json.loads(result.stdout)["placement"] == [
        "replication settings told to node-1, node-2, node-3"
    ]
    assert Node(directory / "nodes/node-1").replicator() is None
    size = sum(p.stat().st_size for p in copy.glob("*.wal"))
    assert sim_run(directory, iterations=1, seed=3, faults={}).committed == 5
    assert sum(p.stat().st_size for p in copy.glob("*.wal")) == size  # nothing shipped any more
    again = cli("--repo", directory, "-o", "json", "reconcile")
    assert json.loads(again.stdout)["placement"] == []
