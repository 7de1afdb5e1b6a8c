"""What running phase work under haios costs, against running the same command without it.

    .venv/bin/python benchmarks/run_bench.py [--dir DIR] [--count 30] [--iterations 3] [--quick]

Measured in one run:
- **node run**: ``haios node run ROOT --g G --phase P --commit -- true`` (a whole phase on one node:
  BEGIN with its snapshot, the staging copy of a data/ of 20 small files, the command, the diff,
  PREPARE, COMMIT), against ``true`` started directly (the baseline), and against the same phase from
  the Python API (``run_phase``: no interpreter start-up), one after the other;
- **lab iteration** (root and network namespaces only): five hosts on a switch, each with its own
  sshd; one iteration — 5 phases on 5 hosts — driven by ``haios run`` (two-phase commit, each host
  writing a JSON and a binary file per phase), against the same command run on the 5 hosts over SSH
  without haios, the hosts of a phase at once (the baseline: what a shell loop over ``ssh host CMD``
  costs, with no staging, no WAL, no commit). Left out, saying why, where namespaces cannot be made.

Medians and p95 in milliseconds; the ratio is against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import latency_row, print_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.lab import HOSTS, PHASE_COMMAND, PHASES, down, make_cluster, up  # noqa: E402
from helpers.netns import cannot_make_namespaces  # noqa: E402

from haios.node import Node, init_node_root  # noqa: E402
from haios.node.runner import run_phase  # noqa: E402


def _seed(root: Path) -> None:
    """A data/ of 20 small files, written by a phase (the stage copies them all every time)."""
    script = 'for i in $(seq 1 20); do printf "line %s\\n" "$i" > "$HAIOS_STAGE/f$i.conf"; done'
    run_phase(root, 1, "ANALYZE", ["sh", "-c", script], commit=True)


def node_run(work: Path, count: int) -> list[list[str]]:
    root = work / "node"
    init_node_root(root, "n1", {"cluster": "bench", "max_g": None})
    _seed(root)
    direct, cli, api = [], [], []
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    position = [1, 0]  # g, index of the next phase (ANALYZE of g=1 is done)

    def next_phase() -> tuple[int, str]:
        position[1] += 1
        if position[1] == len(PHASES):
            position[0], position[1] = position[0] + 1, 0
        return position[0], PHASES[position[1]]

    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(["true"], check=True)
        direct.append(time.perf_counter() - started)
        g, phase = next_phase()
        argv = [sys.executable, "-m", "haios", "node", "run", str(root), "--g", str(g), "--phase", phase]
        started = time.perf_counter()
        subprocess.run([*argv, "--commit", "--", "true"], check=True, capture_output=True, env=env)
        cli.append(time.perf_counter() - started)
        g, phase = next_phase()
        started = time.perf_counter()
        done = run_phase(root, g, phase, ["true"], commit=True)
        api.append(time.perf_counter() - started)
        assert done.outcome == "committed", done.reason
    assert Node(root).state()[0]["status"] == "READY"
    return [
        latency_row("node run: 'true' started directly", direct, None),
        latency_row("node run: haios node run -- true", cli, direct),
        latency_row("node run: run_phase() -- true", api, direct),
    ]


def lab_iteration(work: Path, iterations: int) -> list[list[str]]:
    why = cannot_make_namespaces()
    if why is not None:
        print(f"lab iteration left out: {why}", file=sys.stderr)
        return []
    (work / "lab").mkdir()
    lab = up(work / "lab")
    try:
        make_cluster(lab, work / "lab" / "cluster", interval=5.0, window=20.0)
        for agent in lab.agents.values():  # the baseline has none: neither is measured here
            agent.terminate()
            agent.wait(30)
        lab.agents.clear()
        ssh = [
            "ip", "netns", "exec", lab.operator, "ssh", "-i", str(lab.client_key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        stage = work / "lab" / "plain"

        def plain(node: str, g: int, phase: str) -> None:
            target = stage / node
            env = f"HAIOS_NODE={node} HAIOS_G={g} HAIOS_PHASE={phase} HAIOS_STAGE={target}"
            script = f"mkdir -p {target} && {env} sh -c '{PHASE_COMMAND}'"
            subprocess.run([*ssh, f"root@{lab.addresses[node]}", script], check=True, capture_output=True)

        plain_times, haios_times = [], []
        with ThreadPoolExecutor(len(HOSTS)) as pool:
            for g in range(1, iterations + 1):
                started = time.perf_counter()
                for phase in PHASES:
                    list(pool.map(lambda node, g=g, phase=phase: plain(node, g, phase), HOSTS))
                plain_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                ran = lab.run("run", "--until-g", str(g))
                haios_times.append(time.perf_counter() - started)
                assert ran.returncode == 0, ran.stdout[-1000:] + ran.stderr[-1000:]
        started = time.perf_counter()
        ran = lab.run("run", "--iterations", str(iterations))
        assert ran.returncode == 0, ran.stdout[-1000:] + ran.stderr[-1000:]
        one_run = [(time.perf_counter() - started) / iterations]
        return [
            latency_row("lab iteration (5 phases x 5 hosts): ssh without haios", plain_times, None),
            latency_row("lab iteration: a haios run per iteration", haios_times, plain_times),
            latency_row(f"lab iteration: one haios run of {iterations}, per iteration", one_run, plain_times),
        ]
    finally:
        down(lab)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where the node roots go (default: a temp dir)")
    parser.add_argument("--count", type=int, default=30, help="phases timed per row of 'node run'")
    parser.add_argument("--iterations", type=int, default=3, help="lab iterations timed per row")
    parser.add_argument("--quick", action="store_true", help="a few of each, for the test suite")
    parser.add_argument("--no-lab", action="store_true", help="leave the lab iteration out")
    args = parser.parse_args()
    count, iterations = (3, 1) if args.quick else (args.count, args.iterations)
    base = args.dir or Path(tempfile.mkdtemp(prefix="haios-run-bench-"))
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        rows = [["measure", "median ms", "p95 ms", "n", "ratio"]]
        rows += node_run(work, count)
        if not args.no_lab:
            rows += lab_iteration(work, iterations)
        print_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
