"""Observation: a large first pass is read by worker processes, with the same result as in-process."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from haios.config import load_repo
from haios.ops import observe as observe_mod
from haios.sim.simulator import sim_init, sim_run
from haios.transport import LocalTransport
from haios.wal import RecordType, Wal
from haios.wal.phases import well_formed


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


NODE_1 = {"node": "node-1", "vc": {"node-1": 1}}
BEGIN = {"snapshot": "s", "participants": ["node-1"]}
EFFECT = {"key": "k", "kind": "call", "params": {}, "compensator": "undo", "cost": 1}
# records that verify (framing, CRC, required fields) but name what haios never writes: none of
# them speaks of an attempt
FORGED = [
    (RecordType.BEGIN_PHASE, {"g": 90, "phase": "EVIL", "trace_id": "f1", **BEGIN}),
    (RecordType.COMMIT_PHASE, {"g": 90, "phase": "EVIL", "trace_id": "f1", "digest": "d"}),
    (RecordType.BEGIN_PHASE, {"g": "91", "phase": "ANALYZE", "trace_id": "f2", **BEGIN}),
    (RecordType.BEGIN_PHASE, {"g": [92], "phase": "ANALYZE", "trace_id": "f3", **BEGIN}),
    (RecordType.BEGIN_PHASE, {"g": 93, "phase": "ANALYZE", "trace_id": 93, **BEGIN}),
    (RecordType.BEGIN_PHASE, {"g": 94, "phase": "ANALYZE", "trace_id": "f5", "snapshot": 1, "participants": 5}),
    (RecordType.SIDE_EFFECT, {"g": 95, "phase": "ANALYZE", "trace_id": "f6", **EFFECT, "key": ["unhashable"]}),
    (RecordType.ABORT_PHASE, {"g": 95, "phase": "ANALYZE", "trace_id": "f6", "reason": "x", "abandoned": 7}),
]
# checkpoints of an attempt the node has (the sim committed (1, ANALYZE)) whose outcomes are not the
# mappings an abandon or an override step writes: the projection takes them as naming nothing
ODD = [
    (RecordType.RECOVERY, {"g": 1, "phase": "ANALYZE", "trace_id": "r", "token": 1, "shard": "s", "step": "abandon", "outcome": [1]}),
    (RecordType.RECOVERY, {"g": 1, "phase": "ANALYZE", "trace_id": "r", "token": 1, "shard": "s", "step": "override", "outcome": "n"}),
]  # fmt: skip


def test_records_of_shapes_haios_never_writes_count_for_nothing_and_stop_nothing(tmp_path: Path) -> None:
    from haios.ops.doctor import run_doctor
    from haios.wal.summary import SUMMARY_NAME

    directory = tmp_path / "sim"
    sim_init(directory, 3)
    sim_run(directory, iterations=1, seed=1, faults={})
    wal = directory / "nodes/node-1/wal"
    now = time.time() + 5
    before = run_doctor(directory, now=now)
    with Wal.open(wal) as forged:
        for kind, payload in FORGED + ODD:
            forged.append(kind, {**NODE_1, "ts": 1.0, **payload})
    for reader in ("the nodes' summaries", "a full read"):
        if reader == "a full read":
            shutil.rmtree(directory / "status" / "observed")
            (wal / SUMMARY_NAME).unlink()
        after = run_doctor(directory, now=now)
        assert after.healthy == before.healthy and [f.key for f in after.findings] == [f.key for f in before.findings]
        row = next(r for r in after.nodes if r.node == "node-1")
        assert row.records == next(r for r in before.nodes if r.node == "node-1").records + len(FORGED + ODD)


@pytest.mark.parametrize(("kind", "payload"), FORGED)
def test_a_forged_record_speaks_of_no_attempt(kind: RecordType, payload: dict[str, object]) -> None:
    assert not well_formed(kind, payload)


def test_a_pass_that_reads_nothing_new_leaves_the_cache_file_as_it_was(tmp_path: Path) -> None:
    directory = tmp_path / "sim"
    sim_init(directory, 2)
    sim_run(directory, iterations=1, seed=3, faults={})
    config = load_repo(directory)
    roots = {n.name: n.local_root(directory) for n in config.cluster.nodes}

    def observed() -> dict[str, tuple[object, ...]]:
        obs, _ = observe_mod.observe(directory, LocalTransport(roots), sorted(roots))
        return {n: (o.phases, o.last_lamport, o.records, o.state) for n, o in obs.items()}

    def stamps() -> dict[str, tuple[int, int]]:
        files = {n: observe_mod._cache_path(directory, n).stat() for n in roots}
        return {n: (st.st_ino, st.st_mtime_ns) for n, st in files.items()}

    first = observed()
    written = stamps()
    assert observed() == first and stamps() == written  # nothing new: not written again
    with Wal.open(roots["node-1"] / "wal") as wal:
        wal.append(RecordType.EVENT, {"name": "phase_transition.started", "vc": {}})
    observed()
    after = stamps()
    assert after["node-1"] != written["node-1"] and after["node-2"] == written["node-2"]
    cache = observe_mod._load_cache(directory, "node-1")
    assert observe_mod.unread_bytes(roots["node-1"], cache) == 0  # the new cursor was saved
