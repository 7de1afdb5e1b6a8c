"""Sync-majority WAL replication on local node roots (SPEC §6.1): shipping, acks, LAGGING demotion,
refusal without a majority, permit-async, and restoring a lost WAL from the replicas."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

import pytest
from helpers import Invoke
from hypothesis import given
from hypothesis import strategies as st

from haios import controlfile
from haios.errors import EXIT_BLOCKED, QuorumError, ReplicaChunkError, WalCorruptError, WalMissingError
from haios.node import Node
from haios.ops.doctor import run_doctor
from haios.replication import Replicator, Settings
from haios.replication.links import handle, serve
from haios.replication.origin import MIN_SAMPLES, STATE_FILE, read_state
from haios.replication.peer import Chunk, common_prefix, receive
from haios.replication.restore import restore_wal
from haios.sim.check import sim_check
from haios.sim.simulator import sim_init, sim_run
from haios.sim.trials import run_trials
from haios.transport.local import LocalExchange
from haios.wal import RecordType, read_records
from haios.wal.format import decode_segment_header
from haios.wal.reader import list_segments, verify

# findings that only say how long something took on this machine: a heartbeat the simulator does not
# send, and an ack that took longer than the 50 ms floor of write_timeout on a loaded test machine
TIMING = {"heartbeat_loss", "replica_lagging"}


@pytest.fixture
def replicated(tmp_path: Path) -> Path:
    """A 3-node simulated cluster with replication on, after two clean iterations."""
    directory = sim_init(tmp_path / "cluster", 3, replication=True)
    assert sim_run(directory, iterations=2, seed=3, faults={}).committed == 10
    return directory


def _records(wal: Path) -> list[tuple[int, int, int]]:
    return [(r.lamport, r.crc, int(r.type)) for r in read_records(wal)]


def _node(cluster: Path, name: str, links: dict[str, LocalExchange] | None = None) -> Node:
    node = Node(cluster / "nodes" / name)
    if links is not None:
        node._replicator = Replicator(name, node.root, Settings.from_policy(node.policy), links=dict(links))
    return node


def _tick(node: Node, i: int) -> int:
    """One durable append (an EVENT forced durable): it must be replicated before it returns."""
    return node.append(0, "ANALYZE", "test", RecordType.EVENT, {"name": f"test.tick.{i}"}, durable=True)


def _wait_caught_up(cluster: Path, origin: str, peers: tuple[str, ...]) -> None:
    """An append returns once a majority acknowledged; the other peers' shipments go on (closing the
    node would cancel one still queued): wait for them, bounded, before closing it."""
    wal = cluster / "nodes" / origin / "wal"

    def behind(peer: str) -> bool:
        try:
            return _records(cluster / "nodes" / peer / "replicas" / origin) != _records(wal)
        except WalCorruptError:  # caught mid-write: a tail still arriving
            return True

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(behind(peer) for peer in peers):
        time.sleep(0.05)


def test_every_peer_holds_a_verified_byte_copy(replicated: Path) -> None:
    for origin in ("node-1", "node-2", "node-3"):
        own = replicated / "nodes" / origin / "wal"
        for peer in {"node-1", "node-2", "node-3"} - {origin}:
            copy = replicated / "nodes" / peer / "replicas" / origin
            assert verify(copy).ok
            assert _records(copy) == _records(own)  # every record, the same chain
            for seg in list_segments(own):
                assert (copy / seg.name).read_bytes() == seg.path.read_bytes()


def test_wal_deleted_after_commit_is_restored_from_replicas_nothing_lost(replicated: Path, cli: Invoke) -> None:
    root = replicated / "nodes/node-1"
    before = _records(root / "wal")
    shutil.rmtree(root / "wal")
    assert sim_check(replicated) != []  # the node's history is gone: the check sees it
    found = [(f.kind, f.nodes, f.fix) for f in run_doctor(replicated).findings if f.kind not in TIMING]
    assert found == [
        ("wal_missing", ("node-1",), "haios node rejoin node-1   # rebuilds it from the replicas its peers hold")
    ]
    with pytest.raises(WalMissingError) as refused:
        Node(root).begin(3, "ANALYZE", participants=["node-1"])  # a new WAL would fork the history
    assert refused.value.exit_code == EXIT_BLOCKED and "haios node rejoin node-1" in refused.value.hint
    result = cli("--repo", replicated, "-o", "json", "node", "rejoin", "node-1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["restored"]["restored"] is True and data["restored"]["reason"] == "missing"
    assert data["restored"]["source"] in ("node-2", "node-3") and data["commit"]
    assert _records(root / "wal") == before
    assert sim_check(replicated) == []
    assert [f for f in run_doctor(replicated).findings if f.kind not in TIMING] == []
    # and the node goes on: its next transitions replicate on top of the restored WAL
    assert sim_run(replicated, iterations=1, seed=4, faults={}).committed == 5
    assert sim_check(replicated) == []
    assert _records(replicated / "nodes/node-2/replicas/node-1") == _records(root / "wal")


def test_corrupt_wal_is_restored_and_the_bad_one_kept(replicated: Path) -> None:
    root = replicated / "nodes/node-2"
    before = _records(root / "wal")
    segment = list_segments(root / "wal")[0].path
    data = bytearray(segment.read_bytes())
    data[200] ^= 0x10  # mid-log: valid records follow
    segment.write_bytes(bytes(data))
    corrupt = [f for f in run_doctor(replicated, full=True).findings if f.kind == "wal_corrupt"]
    assert [f.fix for f in corrupt] == [
        "haios node rejoin node-2   # rebuilds the WAL from the replicas its peers hold"
    ]
    result = restore_wal(root)
    assert result.restored and result.reason.startswith("corrupt") and result.kept == "wal.lost.0"
    assert _records(root / "wal") == before
    assert (root / "wal.lost.0" / segment.name).read_bytes() == bytes(data)  # nothing deleted
    assert restore_wal(root).restored is False  # intact now: nothing to do


def test_minority_reachable_refuses_durable_appends_not_downgraded(replicated: Path, tmp_path: Path) -> None:
    node = _node(replicated, "node-1")
    _tick(node, 0)
    gone = tmp_path / "gone"
    gone.mkdir()
    # one peer down: origin + the other peer are still a majority (2 of 3)
    shutil.move(replicated / "nodes/node-3", gone / "node-3")
    _tick(node, 1)
    # both peers down: the append that finds out is written locally but never acknowledged (as if
    # the node had crashed before the ack); from then on appends are refused before anything is written
    shutil.move(replicated / "nodes/node-2", gone / "node-2")
    wal = node.root / "wal"
    with pytest.raises(QuorumError) as refused:
        _tick(node, 2)
    assert refused.value.exit_code == EXIT_BLOCKED
    assert "1 of 2 acknowledgements" in refused.value.message and "node-2" in refused.value.message
    last = _records(wal)[-1]
    with pytest.raises(QuorumError):
        _tick(node, 3)
    with pytest.raises(QuorumError):
        node.begin(3, "ANALYZE", participants=["node-1"])
    assert _records(wal)[-1] == last
    assert not (node.replicator().state().get("lagging") or {})  # unreachable is not LAGGING
    # the peers come back: appends go on, and the peer that missed some catches up
    shutil.move(gone / "node-2", replicated / "nodes/node-2")
    shutil.move(gone / "node-3", replicated / "nodes/node-3")
    _tick(node, 4)

    _wait_caught_up(replicated, "node-1", ("node-2", "node-3"))
    node.close()
    for peer in ("node-2", "node-3"):
        assert _records(replicated / "nodes" / peer / "replicas/node-1") == _records(wal)


def test_slow_peer_is_demoted_to_lagging_and_writes_still_reach_a_majority(replicated: Path) -> None:
    # The judgement compares wall-clock ack times, so the test keeps them far apart: the fast peer
    # skips its fsync (a loaded disk can stall one for hundreds of ms), the noise floor under
    # write_timeout is 1 s, and the slow peer's disk takes 3 s: a 3x margin either side.
    slow_disk = {"delay": 3.0}

    def slow_sync(fd: int) -> None:
        time.sleep(slow_disk["delay"])
        os.fdatasync(fd)

    nodes = replicated / "nodes"
    links = {
        "node-2": LocalExchange("node-2", nodes / "node-2", partial(handle, sync=lambda fd: None)),
        "node-3": LocalExchange("node-3", nodes / "node-3", partial(handle, sync=slow_sync)),
    }
    node = Node(nodes / "node-1")
    # the fixture's own iterations may have judged a peer already (a 50 ms floor on a loaded machine)
    before = len(read_state(node.root)[0].get("history") or [])
    settings = dataclasses.replace(Settings.from_policy(node.policy), min_write_timeout=1.0)
    node._replicator = Replicator("node-1", node.root, settings, links=dict(links))
    try:
        replicator = node.replicator()
        deadline = time.monotonic() + 60
        i = 0
        while "node-3" not in replicator.lagging():
            assert i < 5000 and time.monotonic() < deadline, "the slow peer was never demoted"
            _tick(node, i)  # never refused: node-1 + node-2 are a majority
            i += 1
        assert i >= MIN_SAMPLES // 2  # nobody is judged before enough acks were seen
        state, _ = controlfile.read_mapping(node.root / STATE_FILE)
        assert [h["why"].split(":")[0] for h in state["history"][before:]] == ["node-3 is LAGGING"], state["history"]
        assert state["lagging"]["node-3"]["ack_s"] > state["lagging"]["node-3"]["timeout_s"] >= 1.0
        # judged by its backlog, not only after the shipments sent before anyone could be judged (4 x 3 s)
        assert state["lagging"]["node-3"]["ack_s"] < 3 * slow_disk["delay"]
        lagging = [f for f in run_doctor(replicated).findings if f.kind == "replica_lagging"]
        assert [(f.severity, f.nodes) for f in lagging] == [("warning", ("node-1", "node-3"))]
        # LAGGING: no longer waited for; every write now needs node-2's ack (the quorum is still 2 of 3)
        started = time.monotonic()
        for j in range(5):
            _tick(node, 100 + j)
        assert time.monotonic() - started < slow_disk["delay"]
        node2 = nodes / "node-2"
        shutil.move(node2, nodes / "node-2.away")
        with pytest.raises(QuorumError):
            _tick(node, 200)  # with node-3 LAGGING and node-2 gone, there is no majority: refused
        shutil.move(nodes / "node-2.away", node2)
        # the disk recovers: node-3 finishes its slow shipment, catches up, answers fast, and is taken back
        slow_disk["delay"] = 0.0
        deadline = time.monotonic() + 60
        for j in range(5000):
            _tick(node, 300 + j)
            if "node-3" not in replicator.lagging() or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert "node-3" not in replicator.lagging()
        assert "keeps up again" in replicator.state()["history"][-1]["why"]
        node.close()  # waits for every peer's shipment
        assert _records(nodes / "node-3/replicas/node-1") == _records(node.root / "wal")
    finally:
        slow_disk["delay"] = 0.0  # a failed assertion leaves no slow shipments queued behind it
        node.close()


def test_permit_async_makes_one_peer_ack_only_then_clears_itself(replicated: Path, cli: Invoke) -> None:
    result = cli("--repo", replicated, "-o", "json", "node", "replication", "node-1", "--permit-async", "node-3")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["nodes"][0]
    assert shown["group"] == ["node-1", "node-2", "node-3"] and shown["quorum"] == 2
    assert shown["permit_async"]["peer"] == "node-3"
    assert shown["permit_async"]["until"] == pytest.approx(time.time() + 1800, abs=60)
    node = _node(replicated, "node-1")
    _tick(node, 0)
    replicator = node.replicator()
    node.close()  # waits for every peer's shipment
    assert replicator.last_acks["node-3"]["synced"] is False and replicator.last_acks["node-2"]["synced"] is True
    later = Node(node.root, clock=lambda: time.time() + 1801)
    _tick(later, 1)
    replicator = later.replicator()
    later.close()
    assert replicator.last_acks["node-3"]["synced"] is True
    assert replicator.state()["permit_async"] is None
    assert "expired" in replicator.state()["history"][-1]["why"]
    text = cli("--repo", replicated, "node", "replication")
    assert text.exit_code == 0 and "node-1: group node-1, node-2, node-3 (quorum 2)" in text.stdout
    unknown = cli("--repo", replicated, "node", "replication", "--permit-async", "node-9")
    assert unknown.exit_code == 1 and "node-9" in unknown.stdout + unknown.stderr


def _chunk(replicated: Path) -> tuple[Chunk, Path]:
    wal = replicated / "nodes/node-1/wal"
    seg = list_segments(wal)[0]
    records = list(read_records(wal))
    end = records[-1]
    data = seg.path.read_bytes()
    return Chunk("node-1", 1, seg.name, 0, data, 0, 0, end.lamport, end.crc), seg.path


def test_a_chunk_that_does_not_verify_is_refused_and_cut_off(replicated: Path, tmp_path: Path) -> None:
    good, segment = _chunk(replicated)
    good = Chunk(**{**good.__dict__, "wal_id": decode_segment_header(segment.read_bytes()[:64]).wal_id})
    peer = replicated / "nodes/node-2"
    shutil.rmtree(peer / "replicas/node-1")
    tampered = bytearray(good.data)
    tampered[300] ^= 0x01
    with pytest.raises(ReplicaChunkError) as refused:
        receive(peer, Chunk(**{**good.__dict__, "data": bytes(tampered)}).encode())
    assert "does not verify" in refused.value.message
    assert (peer / "replicas/node-1" / segment.name).stat().st_size == 0  # cut off again
    with pytest.raises(ReplicaChunkError, match="chain ends"):
        receive(peer, Chunk(**{**good.__dict__, "end_lamport": good.end_lamport + 1}).encode())
    ack = receive(peer, good.encode())
    assert ack["ok"] and (ack["token"], ack["crc"]) == (good.end_lamport, good.end_crc)
    assert receive(peer, good.encode())["ok"]  # a resend is acknowledged, nothing written twice
    # bytes that disagree with what the replica holds are kept aside, never overwritten
    other = bytearray(good.data)
    other[-1] ^= 0xFF
    with pytest.raises(ReplicaChunkError):
        receive(peer, Chunk(**{**good.__dict__, "data": bytes(other)}).encode())
    assert (peer / "replicas/node-1" / f"{segment.name}.diverged.0").read_bytes() == good.data


def test_replica_server_answers_errors_in_line_and_goes_on(replicated: Path) -> None:
    answers: list[str] = []
    lines = ["not json\n", json.dumps({"op": "nope"}) + "\n", json.dumps({"op": "replica_status", "origin": "node-1"})]
    assert serve(replicated / "nodes/node-2", lines, answers.append) == 3
    first, second, third = (json.loads(a) for a in answers)
    assert first["error"]["type"] == "UsageError" and "not JSON" in first["error"]["message"]
    assert "unknown replica operation" in second["error"]["message"]
    assert third["ok"] is True and third["lamport"] == _records(replicated / "nodes/node-1/wal")[-1][0]


def test_simulator_trials_with_replication_hold_every_invariant(tmp_path: Path) -> None:
    report = run_trials(tmp_path / "trials", count=6, seed=11, jobs=2, replication=True)
    assert report.failing == [], [t.as_dict() for t in report.failing]
    assert {t.outcome for t in report.trials} <= {"converged", "blocked"}


def test_a_torn_tail_gets_its_acknowledged_records_back_from_a_replica(replicated: Path, cli: Invoke) -> None:
    import random

    from haios.sim.simulator import _damage_tail

    root = replicated / "nodes/node-2"
    before = _records(root / "wal")
    cut = _damage_tail(root, random.Random(1))  # the last record (a COMMIT, acknowledged) half gone
    assert not verify(root / "wal").ok
    result = cli("--repo", replicated, "-o", "json", "reconcile")  # repairs the torn tail on its way
    assert result.exit_code == 0, result.output
    assert _records(root / "wal")[: len(before)] == before  # nothing acknowledged was lost
    assert (root / "wal.lost.0" / cut["segment"]).stat().st_size == cut["cut_at"]  # the torn WAL, kept
    assert sim_check(replicated) == []


def test_a_torn_tail_no_replica_holds_is_cut_as_without_replication(replicated: Path) -> None:
    node = _node(replicated, "node-3")
    wal = node.root / "wal"
    before = _records(wal)
    segment = list_segments(wal)[-1].path
    with open(segment, "ab") as fh:
        fh.write(b"\x17" * 40)  # a record that never finished: no peer ever saw it
    node.open_wal().close()
    assert node.healed is None and _records(wal) == before and verify(wal).ok
    node.close()


def test_a_peer_catching_up_a_whole_wal_takes_it_in_bounded_chunks(
    replicated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haios.replication import origin as origin_module
    from haios.replication import peer as peer_module

    monkeypatch.setattr(origin_module, "MAX_CHUNK", 2048)
    sizes: list[int] = []
    real = peer_module.receive

    def counting(root: Path, request: dict[str, object], **kwargs: object) -> dict[str, object]:
        chunk = Chunk.decode(request)
        if chunk.origin == "node-1":
            sizes.append(len(chunk.data))
        return real(root, request, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(peer_module, "receive", counting)
    for peer in ("node-2", "node-3"):  # both peers lost their copy: each catches up from the top
        shutil.rmtree(replicated / "nodes" / peer / "replicas" / "node-1")
    node = _node(replicated, "node-1")
    _tick(node, 1)
    _wait_caught_up(replicated, "node-1", ("node-2", "node-3"))
    node.close()
    own = replicated / "nodes/node-1/wal"
    wal_bytes = sum(s.path.stat().st_size for s in list_segments(own))
    assert wal_bytes > 3 * 2048 and len(sizes) > 3  # several requests a peer
    record_max = max(len(r.raw) for r in read_records(own)) + 512
    assert max(sizes) <= 2048 + record_max  # each within the limit, but for a record larger than it
    for peer in ("node-2", "node-3"):
        copy = replicated / "nodes" / peer / "replicas" / "node-1"
        assert verify(copy).ok and _records(copy) == _records(own)
        for seg in list_segments(own):
            assert (copy / seg.name).read_bytes() == seg.path.read_bytes()


@pytest.mark.parametrize("window", [None, 512])
def test_a_new_origin_process_ships_only_what_its_peers_lack(
    replicated: Path, monkeypatch: pytest.MonkeyPatch, window: int | None
) -> None:
    """Each node process meets its peers afresh: a peer whose copy hashes the same as the origin's
    bytes is sent only the new records; one whose copy differs (a flipped byte) is sent the segment
    from its top, keeps the copy that disagrees aside and ends with the origin's bytes. (With a
    512-byte window, the search for where the copy ends crosses many windows.)"""
    from haios.replication import origin as origin_module
    from haios.replication import peer as peer_module

    if window is not None:
        monkeypatch.setattr(origin_module, "RESUME_WINDOW", window)

    sent: list[tuple[str, int, int]] = []
    real = peer_module.receive

    def counting(root: Path, request: dict[str, object], **kwargs: object) -> dict[str, object]:
        chunk = Chunk.decode(request)
        if chunk.origin == "node-1":
            sent.append((root.name, chunk.offset, len(chunk.data)))
        return real(root, request, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(peer_module, "receive", counting)
    own = replicated / "nodes/node-1/wal"
    last = list_segments(own)[-1]
    held = last.path.stat().st_size
    damaged = replicated / "nodes/node-3/replicas/node-1" / last.name
    body = bytearray(damaged.read_bytes())
    body[held // 2] ^= 0x10
    damaged.write_bytes(bytes(body))
    node = _node(replicated, "node-1")
    _tick(node, 1)
    _wait_caught_up(replicated, "node-1", ("node-2", "node-3"))
    node.close()
    grown = last.path.stat().st_size
    assert [(offset, size) for peer, offset, size in sent if peer == "node-2"] == [(held, grown - held)]
    assert [offset for peer, offset, _ in sent if peer == "node-3"] == [0]
    assert (damaged.parent / f"{last.name}.diverged.0").read_bytes() == bytes(body)
    for peer in ("node-2", "node-3"):
        copy = replicated / "nodes" / peer / "replicas" / "node-1"
        assert verify(copy).ok and (copy / last.name).read_bytes() == last.path.read_bytes()


@given(st.binary(max_size=64), st.binary(max_size=64), st.binary(max_size=64))
def test_common_prefix_is_the_length_of_the_shared_start(shared: bytes, a: bytes, b: bytes) -> None:
    left, right = shared + a, shared + b
    assert common_prefix(left, right) == len(os.path.commonprefix([left, right]))


def test_common_prefix_of_large_chunks() -> None:
    chunk = os.urandom(4 << 20)
    assert common_prefix(chunk, chunk) == len(chunk)
    assert common_prefix(chunk, chunk[:1000]) == 1000
    changed = bytearray(chunk)
    changed[3_000_001] ^= 0x40
    assert common_prefix(chunk, bytes(changed)) == 3_000_001
    assert common_prefix(b"", chunk) == 0
