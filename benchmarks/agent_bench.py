"""What one round of the node agent costs: a heartbeat and gossip with 3 peers, by how they are reached.

    .venv/bin/python benchmarks/agent_bench.py [--dir DIR] [--rounds 50] [--quick]

Measured in one run, on node-1 of a 5-node simulated cluster:
- **kept-open SSH sessions** (what ``haios agent`` does): the peers are reached through an OpenSSH
  server on loopback started here, one ``haios node gossip-serve`` session per peer kept open across
  rounds (the first round, which opens them, is not timed);
- **a session per round** (the baseline): the same requests, each round opening new sessions — an SSH
  connection and a Python interpreter on every peer per round, what calling ``ssh peer haios …``
  from a loop would cost;
- **local roots** (for reference): the peers' roots on this machine, answered in this process.

Needs Debian's openssh-server for the SSH rows (left out without it). Medians and p95 in milliseconds;
the ratio is against the baseline of the same run. The design asks a round to cost milliseconds, not
a Python start-up: the kept-open row should be a small fraction of the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import latency_row, loopback_sshd, print_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.sshd import sshd_binary  # noqa: E402 - the tests' fixtures, shared

from haios.node.gossip import serve  # noqa: E402
from haios.ops.agent import Agent  # noqa: E402
from haios.sim.simulator import sim_init  # noqa: E402
from haios.transport.local import LocalExchange  # noqa: E402


def rounds(agent: Agent, count: int, *, fresh: bool) -> list[float]:
    """Seconds per round over ``count`` rounds after one untimed round; ``fresh``: every round's
    sessions are closed after it, so the next opens new ones."""
    times = []
    try:
        agent.round()
        for _ in range(count):
            if fresh:
                agent.close()
            started = time.perf_counter()
            agent.round()
            times.append(time.perf_counter() - started)
    finally:
        agent.shutdown()
    return times


def _row(name: str, values: list[float], base: list[float] | None) -> list[str]:
    return latency_row(name, values, base, digits=3)


def _log(line: str) -> None:
    print(f"agent: {line}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (default: a temporary one).")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes (a smoke run).")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    work = Path(tempfile.mkdtemp(prefix="agent-bench-", dir=args.dir))
    rows = [["measure", "median ms", "p95 ms", "n", "ratio"]]
    try:
        local = sim_init(work / "local", 5)
        roots = {n: local / "nodes" / n for n in ("node-1", "node-2", "node-3", "node-4", "node-5")}
        in_process = Agent(
            roots["node-1"], log=_log, clock=time.time, connect=lambda p: LocalExchange(p, roots[p], serve)
        )
        local_times = rounds(in_process, args.rounds, fresh=False)
        if sshd_binary() is not None:
            with loopback_sshd(work) as layout:
                cluster = sim_init(work / "ssh", 5, ssh=layout)
                root = cluster / "nodes/node-1"
                per_round = rounds(Agent(root, log=_log, clock=time.time), max(3, args.rounds // 5), fresh=True)
                kept = rounds(Agent(root, log=_log, clock=time.time), args.rounds, fresh=False)
                rows.append(_row("round, a session per round (ssh + interpreter)", per_round, None))
                rows.append(_row("round, kept-open SSH sessions (haios agent)", kept, per_round))
                rows.append(_row("round, local roots in process", local_times, per_round))
        else:
            print("(no sshd: Debian's openssh-server is not installed; the SSH rows are left out)", file=sys.stderr)
            rows.append(_row("round, local roots in process", local_times, None))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
