"""What replication and the etcd backend cost: durable BEGIN_PHASE latency and lock round trips.

    .venv/bin/python benchmarks/replication_bench.py [--dir DIR] [--transitions 200] [--locks 200]
                                                     [--quick]

Measured in one run, each against its baseline from the same run:
- **BEGIN_PHASE, local**: ``Node.begin`` on node-1 of a 3-node cluster whose roots are on this disk
  (snapshot of data/, the durable BEGIN_PHASE, exec_status and state.txt), with sync-majority
  replication at R=3 (every BEGIN waits for one of the two peers' fsynced, verified copies) against
  the same cluster with replication off; the rest of each transition (intents, PREPARE, COMMIT) runs
  too but is not timed;
- **BEGIN_PHASE, over SSH**: the same with the peers reached through an OpenSSH server on loopback
  started here (each peer's copies kept by one long-lived ``haios node replica-serve`` session);
  needs Debian's openssh-server, skipped without it;
- **locks**: acquire + release of one shard's lease, on the git backend (refs in the desired-state
  repo, compare-and-swap through ``git update-ref``) and on the etcd backend against a 3-member etcd
  cluster started here (Debian's etcd-server; skipped without it).

Medians and p95 in milliseconds, ratios against the baseline of the same row. There is no target:
these figures say what replication costs, for the operator deciding on it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import latency_row as _row
from _common import loopback_sshd, print_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.sshd import sshd_binary  # noqa: E402 - the tests' fixtures, shared

from haios.node import Node  # noqa: E402
from haios.node.timing import collecting  # noqa: E402
from haios.node.transaction import next_transition  # noqa: E402
from haios.sim.simulator import sim_init  # noqa: E402


def begin_latencies(cluster: Path, transitions: int) -> tuple[list[float], list[float]]:
    """Seconds per ``Node.begin`` on node-1 over ``transitions`` whole transitions, and of the durable
    BEGIN_PHASE append inside it (write, fsync and, with replication, the majority's acks); one more
    transition runs first, untimed: it opens the links to the peers."""
    node = Node(cluster / "nodes/node-1")
    times: list[float] = []
    appends: list[float] = []
    try:
        state, _ = node.state()
        g, phase = next_transition(state["g"], state["ph"])
        for i in range(transitions + 1):
            with collecting() as steps:
                started = time.perf_counter()
                tx = node.begin(g, phase, participants=["node-1"], trace_id=f"bench-{i}")
                took = time.perf_counter() - started
            if i:
                times.append(took)
                appends.append(steps["wal_fsync"])
            tx.intent(f"bench/{phase.lower()}.conf", f"g={g} {phase} {i}\n".encode())
            tx.prepare()
            tx.commit()
            g, phase = next_transition(g, phase)
    finally:
        node.close()
    return times, appends


def lock_latencies(backend: object, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        lease = backend.acquire("CONSTRUCT", "bench-holder", f"trace-{i}", 60.0, time.time())  # type: ignore[attr-defined]
        backend.release(lease, time.time())  # type: ignore[attr-defined]
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (default: a temporary one).")
    parser.add_argument("--transitions", type=int, default=200)
    parser.add_argument("--locks", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes (a smoke run).")
    args = parser.parse_args()
    if args.quick:
        args.transitions, args.locks = 15, 15
    work = Path(tempfile.mkdtemp(prefix="replication-bench-", dir=args.dir))
    rows = [["measure", "median ms", "p95 ms", "n", "ratio"]]
    try:
        plain, plain_append = begin_latencies(sim_init(work / "plain", 3), args.transitions)
        local, local_append = begin_latencies(sim_init(work / "r3", 3, replication=True), args.transitions)
        rows.append(_row("BEGIN_PHASE record, replication off", plain_append, None))
        rows.append(_row("BEGIN_PHASE record, R=3 local", local_append, plain_append))
        rows.append(_row("Node.begin (snapshot too), replication off", plain, None))
        rows.append(_row("Node.begin (snapshot too), R=3 local", local, plain))
        if sshd_binary() is not None:
            with loopback_sshd(work) as layout:
                remote, remote_append = begin_latencies(
                    sim_init(work / "ssh", 3, ssh=layout, replication=True), args.transitions
                )
                rows.append(_row("BEGIN_PHASE record, R=3 over SSH", remote_append, plain_append))
                rows.append(_row("Node.begin (snapshot too), R=3 over SSH", remote, plain))
        else:
            print("(no sshd: Debian's openssh-server is not installed; the SSH row is left out)", file=sys.stderr)
        from haios.coord.git import GitBackend

        git_times = lock_latencies(GitBackend(work / "plain"), args.locks)
        rows.append(_row("lock acquire+release, git", git_times, None))
        if shutil.which("etcd"):
            from helpers.etcd import EtcdCluster

            from haios.coord.etcd import EtcdBackend

            (work / "etcd").mkdir()
            etcd = EtcdCluster(work / "etcd").start()
            try:
                backend = EtcdBackend(etcd.endpoints, cluster="sim")
                rows.append(
                    _row("lock acquire+release, etcd (3 members)", lock_latencies(backend, args.locks), git_times)
                )
            finally:
                etcd.stop()
        else:
            print("(no etcd: Debian's etcd-server is not installed; the etcd row is left out)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
