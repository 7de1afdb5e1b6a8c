"""The etcd coordination backend against a real 3-member etcd cluster on loopback: contention,
takeover of a killed holder with a higher token, failover when a member dies, and a clear error
(with nothing changed) when the whole cluster is down."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import at, subprocs
from helpers.cluster import git, head, plant, positions
from helpers.etcd import EtcdCluster

from haios.config import load_repo
from haios.coord import GitBackend, open_backend
from haios.coord.etcd import EtcdBackend
from haios.errors import CoordinationError, FencedError, LockHeldError
from haios.node.fence import check_fence
from haios.ops import reconcile


def _use_etcd(cluster: Path, etcd: EtcdCluster) -> None:
    config = cluster / "haios.yaml"
    endpoints = "".join(f"\n      - {e}" for e in etcd.endpoints)
    text = config.read_text()
    assert "  backend: git" in text
    config.write_text(text.replace("  backend: git", f"  backend: etcd\n  etcd:\n    endpoints:{endpoints}"))
    git(cluster, "commit", "-qam", "tests: coordination on etcd")


def test_tokens_of_every_shard_come_from_one_counter(etcd: EtcdCluster) -> None:
    """(The race for one shard is in the contract suite, tests/coord/test_contract.py.)"""
    backend = EtcdBackend(etcd.endpoints, cluster="c")
    lease = backend.acquire("CONSTRUCT", "host/0/0/r0", "trace-0", 30, time.time())
    other = backend.acquire("BLUEPRINT", "host/1/0/r1", "t", 30, time.time())  # shards are independent
    assert other.token > lease.token


def test_a_killed_holder_is_taken_over_with_a_higher_token(etcd: EtcdCluster, cluster: Path) -> None:
    script = (
        "import sys, time; from haios.coord.etcd import EtcdBackend\n"
        "b = EtcdBackend(sys.argv[1].split(','), cluster='c')\n"
        "lease = b.acquire('ANALYZE', 'elsewhere/99/1/dead', 'trace-dead', 2, time.time())\n"
        "print(lease.token, flush=True); time.sleep(60)\n"
    )
    holder = subprocs.spawn([sys.executable, "-c", script, ",".join(etcd.endpoints)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    old_token = int(holder.stdout.readline())
    root = cluster / "nodes/node-1"
    check_fence(root, "ANALYZE", old_token)  # the node accepted the old holder's commands
    holder.kill()  # no more keep-alives: etcd drops the key when the lease's TTL runs out
    holder.wait()
    holder.stdout.close()
    backend = EtcdBackend(etcd.endpoints, cluster="c")
    with pytest.raises(LockHeldError):
        backend.acquire("ANALYZE", "here/1/1/new", "trace-new", 30, time.time())
    deadline = time.monotonic() + 15
    while True:
        try:
            lease = backend.acquire("ANALYZE", "here/1/1/new", "trace-new", 30, time.time())
            break
        except LockHeldError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert lease.token > old_token
    assert lease.previous == {"holder": "elsewhere/99/1/dead", "trace_id": "trace-dead", "token": old_token}
    check_fence(root, "ANALYZE", lease.token)
    with pytest.raises(FencedError):
        check_fence(root, "ANALYZE", old_token)  # the old holder is FENCED on the node
    stale = EtcdBackend(etcd.endpoints, cluster="c")
    from haios.coord.base import Lease

    with pytest.raises(FencedError):
        stale.renew(Lease("ANALYZE", "elsewhere/99/1/dead", "trace-dead", old_token, 0, 0), 30, time.time())


def test_tokens_start_above_the_git_backends(etcd: EtcdCluster, cluster: Path) -> None:
    git_backend = GitBackend(cluster)
    for _ in range(5):
        lease = git_backend.acquire("VALIDATE", "h/1/1/x", "t", 30, time.time())
        git_backend.release(lease, time.time())
    _use_etcd(cluster, etcd)
    backend = open_backend(load_repo(cluster))
    assert isinstance(backend, EtcdBackend)
    assert backend.acquire("ANALYZE", "h/1/1/x", "t", 30, time.time()).token > 5


def test_reconcile_on_etcd_converges_and_survives_a_member_dying(etcd: EtcdCluster, cluster: Path) -> None:
    _use_etcd(cluster, etcd)
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    timer = threading.Timer(0.3, etcd.kill, args=(0,))  # the endpoint the client talks to first
    timer.start()
    try:
        result = reconcile(cluster)
    finally:
        timer.cancel()
        timer.join()
    assert result.exit_code() == 0, result.to_json()
    assert positions(cluster) == {n: (1, "IDLE") for n in ("node-1", "node-2", "node-3")}
    etcd.kill(0)
    lease = open_backend(load_repo(cluster)).read("ANALYZE")
    assert lease is not None and lease.released and lease.token == result.outcomes[0].token


def test_etcd_down_is_a_clear_error_and_changes_nothing(etcd: EtcdCluster, cluster: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _use_etcd(cluster, etcd)
    plant(cluster, node_1="commit", node_2="prepare", node_3="prepare")
    etcd.stop()
    before = head(cluster)
    result = cli("--repo", cluster, "reconcile")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: etcd unreachable") and "connection refused" in line and "hint:" in line
    assert head(cluster) == before and positions(cluster)["node-2"] == (1, "IDLE")
    report = cli("--repo", cluster, "-o", "json", "doctor")
    kinds = {f["kind"] for f in __import__("json").loads(report.stdout)["findings"]}
    assert "coordination" in kinds


def test_doctor_names_a_dead_member(etcd: EtcdCluster, cluster: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _use_etcd(cluster, etcd)
    etcd.kill(2)
    result = cli("--repo", cluster, "doctor")
    assert result.exit_code == 2
    assert f"etcd endpoint {etcd.endpoints[2]} does not answer" in result.stdout


def test_no_endpoint_is_a_config_error() -> None:
    with pytest.raises(CoordinationError, match="at least one endpoint"):
        EtcdBackend([], cluster="c")


def test_etcd_barrier_compare_and_swap_on_mod_revision(etcd: EtcdCluster) -> None:
    from haios.coord import Barrier
    from haios.errors import BarrierError, BarrierMoved

    a, b = (EtcdBackend(etcd.endpoints, cluster="c1") for _ in range(2))
    assert a.barrier() == Barrier()
    seen = a.barrier()
    first = a.advance_barrier(seen, 1, "ANALYZE", "a", 1.0)
    assert (first.g, first.phase) == (1, "ANALYZE") and first.version > 0
    assert b.barrier() == first  # the version is the key's mod revision
    with pytest.raises(BarrierMoved, match="g=1, ANALYZE"):
        b.advance_barrier(seen, 1, "BLUEPRINT", "b", 2.0)
    with pytest.raises(BarrierError):
        a.advance_barrier(first, 0, "IDLE", "a", 3.0)
    etcd.kill(0)  # a member gone: the next update fails over
    second = b.advance_barrier(b.barrier(), 1, "BLUEPRINT", "b", 4.0)
    assert second.version > first.version and a.barrier() == second


def test_faulty_simulated_cluster_converges_on_etcd_with_a_member_killed(etcd: EtcdCluster, tmp_path: Path) -> None:
    from haios.sim.check import sim_check
    from haios.sim.simulator import sim_init, sim_run

    directory = sim_init(tmp_path / "sim", 4)
    _use_etcd(directory, etcd)
    report = sim_run(directory, iterations=3, seed=2, faults={"kill": 0.5, "compfail": 0.3})
    assert report.stopped_at is not None, "the seed must leave something to recover"
    timer = threading.Timer(0.2, etcd.kill, args=(1,))
    timer.start()
    try:
        now = time.time()
        for _ in range(20):
            result = reconcile(directory, clock=at(now))
            if result.exit_code() == 0:
                break
            now = max(now + 300, result.next_due or 0)  # a compensator backing off: cron goes on
    finally:
        timer.cancel()
        timer.join()
    assert result.exit_code() == 0, result.to_json()
    assert sim_check(directory) == []
    barrier = open_backend(load_repo(directory)).barrier()
    assert (barrier.g, barrier.phase) == min(positions(directory).values())


def test_a_call_waits_out_an_election_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from etcd3gw.exceptions import ConnectionFailedError

    from haios.coord import etcd as etcd_module

    slept: list[float] = []
    monkeypatch.setattr(etcd_module.time, "sleep", slept.append)
    backend = EtcdBackend(["http://127.0.0.1:1", "http://127.0.0.1:2"], cluster="c")
    electing = '{"error":"etcdserver: leader changed","message":"etcdserver: leader changed","code":14}'
    # each round asks the first endpoint first: its answer starts the next scripted round
    script = iter([["Connection refused", electing], ["Connection refused", electing], [None, None]])
    answers: list[str | None] = []

    def call(client: object) -> str:
        if client is backend.clients[0]:
            answers[:] = next(script)
        failure = answers[backend.clients.index(client)]
        if failure is not None:
            raise ConnectionFailedError(failure)
        return "answered"

    assert backend._call("reading k", call) == "answered"
    assert len(slept) == 2  # two rounds found the members electing a leader: waited, then answered

    # members that keep electing: the wait is bounded
    clock = iter(range(1000))
    monkeypatch.setattr(etcd_module.time, "monotonic", lambda: float(next(clock)))

    def electing_forever(client: object) -> str:
        raise ConnectionFailedError(electing)

    with pytest.raises(CoordinationError, match="leader changed"):
        backend._call("reading k", electing_forever)

    # none answers at all: said at once, no wait
    slept.clear()

    def refused(client: object) -> str:
        raise ConnectionFailedError("[Errno 111] Connection refused")

    with pytest.raises(CoordinationError, match="connection refused"):
        backend._call("reading k", refused)
    assert slept == []
