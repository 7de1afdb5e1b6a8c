"""Observation: a large first pass is read by worker processes, with the same result as in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from haios.config import load_repo
from haios.ops import observe as observe_mod
from haios.sim.simulator import sim_init, sim_run
from haios.transport import LocalTransport


def test_observe_in_processes_equals_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "sim"
    sim_init(directory, 3)
    sim_run(directory, iterations=2, seed=3, faults={})
    twin = tmp_path / "twin"
    shutil.copytree(directory, twin, symlinks=True)

    def run(repo: Path) -> tuple[object, object]:
        config = load_repo(repo)
        roots = {n.name: n.local_root(repo) for n in config.cluster.nodes}
        obs, durations = observe_mod.observe(repo, LocalTransport(roots), sorted(roots))
        return {n: (o.phases, o.last_lamport, o.records, o.state) for n, o in obs.items()}, durations

    in_process = run(directory)
    with monkeypatch.context() as m:
        m.setattr(observe_mod, "PROCESS_THRESHOLD", 0)
        m.setattr(observe_mod.os, "cpu_count", lambda: 2)
        calls: list[int] = []
        real = observe_mod._in_processes

        def counted(*a: object, **k: object) -> object:
            calls.append(1)
            return real(*a, **k)  # type: ignore[arg-type]

        m.setattr(observe_mod, "_in_processes", counted)
        in_processes = run(twin)
    assert calls == [1]
    assert in_processes == in_process
    cache = observe_mod._load_cache(twin, "node-1")
    assert observe_mod.unread_bytes(twin / "nodes/node-1", cache) == 0  # the cursor was saved


def test_catch_up_commits_are_not_duration_samples(tmp_path: Path) -> None:
    """A rejoining node commits the transitions it missed in milliseconds: those must not drag the
    phase's P95 (and so its Φ timeout) down."""
    from haios.node import Node, init_node_root, recover
    from haios.node.transaction import intents_digest

    root = tmp_path / "nodes" / "n1"
    init_node_root(root, "n1", {"cluster": "c", "max_g": None})
    clock = iter([100.0, 100.0, 100.0, 160.0, 160.0, 160.0, 160.0, 160.0])
    with Node(root, clock=lambda: next(clock, 160.0)).begin(1, "ANALYZE", participants=["n1"]) as tx:
        tx.prepare()
        tx.commit()  # a real ANALYZE: one minute
    source = {"node": "n2", "g": 1, "phase": "BLUEPRINT", "trace_id": "t", "intents": [], "digest": intents_digest([])}
    recover.catchup(root, trace_id="rejoin-n1-0123", token=1, g=1, phase="BLUEPRINT", note="missed", source=source)
    obs, durations = observe_mod.observe_node(tmp_path, "n1", root)
    assert obs.state is not None and (obs.state["g"], obs.state["ph"]) == (1, "BLUEPRINT")
    assert durations.get("ANALYZE") == [60.0] and "BLUEPRINT" not in durations
