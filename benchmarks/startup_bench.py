"""What starting the ``haios`` command costs, against starting the interpreter alone.

    .venv/bin/python benchmarks/startup_bench.py [--dir DIR] [--count 10] [--records 100000] [--quick]

Measured in one run, each command started ``--count`` times (wall time of the whole process):
- ``python3 -c pass`` with the same interpreter: the baseline;
- ``haios --version``;
- ``haios --help`` (it lists every command, so it imports them all);
- what a phase's command calls per sub-step on a node with a phase open: ``haios node step``,
  ``haios node side-effect``, ``haios node intent`` (each appends one WAL record);
- ``haios node step`` again on a node whose WAL already holds ``--records`` records (a node that
  has run for a while: opening its WAL must not cost a read of its whole last segment).

Each row prints the median and p95 in milliseconds and the ratio of the median to the baseline's; the
targets are those of the project's performance issue: ``--version`` ≤ 150 ms, a sub-step ≤ 200 ms.
Exit 1 when a target is missed (at ``--quick`` sizes that is not a failure: the suite only checks the
table prints).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import p95, print_table
from detect_bench import write_history

from haios.node import Node, init_node_root

TARGETS = {
    "haios --version": 0.150,
    "haios node step": 0.200,
    "haios node side-effect": 0.200,
    "haios node intent": 0.200,
    "haios node step, long WAL": 0.200,
}


def _timed(argv: list[str], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to build the node root (default: a temp dir)")
    parser.add_argument("--count", type=int, default=10, help="starts per command (default 10)")
    parser.add_argument("--records", type=int, default=100_000, help="records in the long WAL (default 100,000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 starts per command")
    args = parser.parse_args()
    count, records = (2, 2_000) if args.quick else (args.count, args.records)
    work = Path(tempfile.mkdtemp(prefix="startup-", dir=args.dir))
    try:
        root = work / "node"
        init_node_root(root, "n1", {"cluster": "bench", "max_g": None})
        Node(root).begin(1, "ANALYZE", participants=["n1"]).close()
        long = work / "long"
        init_node_root(long, "n1", {"cluster": "bench", "max_g": None})
        write_history(long, "n1", records)
        g_long = Node(long).state()[0]["g"] + 1
        Node(long).begin(g_long, "ANALYZE", participants=["n1"]).close()
        content = work / "content.txt"
        content.write_text("x\n")
        haios = [sys.executable, "-m", "haios"]
        where = [str(root), "--g", "1", "--phase", "ANALYZE"]
        seq = iter(range(1_000_000))
        runs: dict[str, list[float]] = {"python3 -c pass": _timed([sys.executable, "-c", "pass"], count)}
        runs["haios --version"] = _timed([*haios, "--version"], count)
        runs["haios --help"] = _timed([*haios, "--help"], count)
        runs["haios node step"] = []
        runs["haios node side-effect"] = []
        runs["haios node intent"] = []
        for _ in range(count):  # each a new record: a new step name, key and file every time
            n = next(seq)
            runs["haios node step"] += _timed([*haios, "node", "step", *where, f"step-{n}"], 1)
            runs["haios node side-effect"] += _timed(
                [
                    *haios,
                    "node",
                    "side-effect",
                    *where,
                    "--key",
                    f"k-{n}",
                    "--kind",
                    "bench.thing",
                    "--compensator",
                    "c",
                ],
                1,
            )
            runs["haios node intent"] += _timed(
                [*haios, "node", "intent", *where, f"f-{n}.txt", "--content-file", str(content)], 1
            )
        long_where = [str(long), "--g", str(g_long), "--phase", "ANALYZE"]
        runs["haios node step, long WAL"] = [
            t for n in range(count) for t in _timed([*haios, "node", "step", *long_where, f"step-{n}"], 1)
        ]
        base = statistics.median(runs["python3 -c pass"])
        rows = [["measure", "median ms", "p95 ms", "n", "ratio", "target", "ok"]]
        missed = False
        for name, values in runs.items():
            median = statistics.median(values)
            target = TARGETS.get(name)
            ok = "-" if target is None else ("yes" if median <= target else "NO")
            missed |= ok == "NO"
            rows.append(
                [
                    f"{name} ({records:,} records)" if name.endswith("long WAL") else name,
                    f"{median * 1000:.1f}",
                    f"{p95(values) * 1000:.1f}",
                    str(len(values)),
                    "1.00x (baseline)" if name == "python3 -c pass" else f"{median / base:.1f}x",
                    "-" if target is None else f"<= {target * 1000:.0f} ms",
                    ok,
                ]
            )
        print_table(rows)
        return 1 if missed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
