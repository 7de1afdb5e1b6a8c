"""The multi-host lab by hand (root, Linux network namespaces, OpenSSH sshd).

    python tests/lab.py trials [--count 30] [--seed 1] [--iterations 2]
        five hosts, then COUNT trials: 'haios run' with one random fault (a host's processes
        SIGKILLed and started again, a host's link down, a 2|3 split, 'haios run' SIGKILLed),
        healed, converged with 'haios reconcile' and 'haios run', every invariant checked from the
        hosts' disks; prints one line per trial and the trials per minute. Exit 1 on a violation.

    python tests/lab.py up [--dir DIR]
        five hosts and their agents, kept until Ctrl-C; prints how to reach them.

Every loop is bounded in count and in time; only the lab's own addresses (10.204.0.0/24) are used.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.lab import HOSTS, LAB_INTERVAL, LAB_WINDOW, down, lab_cluster, trial, up  # noqa: E402
from helpers.netns import cannot_make_namespaces  # noqa: E402


def trials(count: int, seed: int, iterations: int, keep: Path | None) -> int:
    work = keep or Path(tempfile.mkdtemp(prefix="haios-lab-"))
    lab = up(work)
    try:
        lab_cluster(lab, work)
        rng = random.Random(seed)
        started = time.monotonic()
        bad = 0
        print(
            f"{'#':>3}  {'fault':<10} {'target':<22} {'goal':>4} {'run exit':>8} {'rounds':>6} {'seconds':>7}  violations"
        )
        for number in range(1, count + 1):
            done = trial(lab, rng, iterations=iterations)
            bad += len(done.violations)
            print(
                f"{number:>3}  {done.fault:<10} {done.target:<22} {done.goal:>4} {done.run_exit!s:>8} "
                f"{done.rounds:>6} {done.seconds:>7.1f}  {len(done.violations)}",
                flush=True,
            )
            for line in done.violations:
                print(f"     {line}")
        minutes = (time.monotonic() - started) / 60
        print(f"{count} trials in {minutes * 60:.0f} s: {count / minutes:.1f} trials/minute; {bad} violation(s)")
        return 1 if bad else 0
    finally:
        down(lab)


def keep_up(directory: Path | None) -> int:
    work = directory or Path(tempfile.mkdtemp(prefix="haios-lab-"))
    lab = up(work)
    try:
        cluster = lab_cluster(lab, work)
        print(f"heartbeat interval {LAB_INTERVAL:g} s, partition window {LAB_WINDOW:g} s")
        print(f"the lab's cluster: {cluster}")
        print(f"run haios there:   ip netns exec {lab.operator} {sys.executable} -m haios --repo {cluster} doctor")
        print(f"  with HAIOS_SSH_IDENTITY={lab.client_key} HAIOS_REMOTE_COMMAND='{sys.executable} -m haios'")
        for node in HOSTS:
            print(f"  {node}: {lab.addresses[node]} in namespace {lab.hosts[node]}")
        print("Ctrl-C takes it down")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        down(lab)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trials", help="random-fault trials with the invariants checked after each")
    t.add_argument("--count", type=int, default=30)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--iterations", type=int, default=2, help="iterations 'haios run' drives per trial")
    t.add_argument("--dir", type=Path, default=None, help="keep the lab's files here")
    u = sub.add_parser("up", help="bring the lab up and keep it until Ctrl-C")
    u.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    why = cannot_make_namespaces()
    if why is not None:
        print(f"lab: {why}", file=sys.stderr)
        return 1
    if args.command == "trials":
        return trials(args.count, args.seed, args.iterations, args.dir)
    return keep_up(args.dir)


if __name__ == "__main__":
    sys.exit(main())
