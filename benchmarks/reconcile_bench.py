"""Reconcile benchmarks: a large cluster with one half-done transition, and many simulated trials.

    .venv/bin/python benchmarks/reconcile_bench.py [--dir DIR] [--nodes 200] [--records 100000]
                                                    [--trials 5000] [--jobs N] [--quick]
                                                    [--without-summaries]

1. NODES local nodes whose WALs hold RECORDS records each (whole phases, written as in
   detect_bench.py), then one more transition (g+1, ANALYZE) with every node as a participant: a
   quarter of the nodes PREPAREd it without committing, the rest committed it. `haios reconcile`
   rolls it forward (first run: target <= 30 s at the default sizes; it starts from the summary
   each node's WAL writer keeps, or, with --without-summaries, folds every record of every WAL),
   then runs again with nothing to do (second run). Each run is a
   child process; its wall time and peak RSS (its own or that of any process it started, such as
   the observation workers) are reported. Targets: peak RSS < 256 MiB; second run
   <= 0.1 x the first (the observation cache makes it read only what is new).
2. `haios sim trials` for TRIALS trials (every fault kind): violations (target 0) and trials/minute.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import PEAK_RSS, print_table, run_child
from detect_bench import build_cluster

from haios.config import load_repo
from haios.node import Node
from haios.sim.trials import run_trials
from haios.wal.summary import SUMMARY_NAME

RECONCILE_CHILD = (
    PEAK_RSS
    + """
import json, resource, sys, time
from haios.ops import reconcile
t = time.perf_counter(); result = reconcile(sys.argv[1]); elapsed = time.perf_counter() - t
rss = max(peak_rss_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": elapsed, "exit": result.exit_code(), "commit": result.commit,
                  "steps": sum(o.steps for o in result.outcomes), "rss_kib": rss}))
"""
)


FIRST_RUN_TARGET = 30.0  # seconds, at 200 nodes x 100,000 records


def half_done(repo: Path) -> int:
    """(g+1, ANALYZE) on every node: committed on three quarters, only PREPAREd on the rest."""
    config = load_repo(repo)
    roots = [n.local_root(repo) for n in config.cluster.nodes]
    names = [n.name for n in config.cluster.nodes]
    prepared_only = 0
    for i, root in enumerate(roots):
        node = Node(root)
        state, _ = node.state()
        tx = node.begin(state["g"] + 1, "ANALYZE", participants=names, trace_id="bench-half-done")
        tx.intent("analyze/bench.conf", f"node {node.name}\n".encode())
        tx.prepare()
        if i % 4 == 0:
            prepared_only += 1
            tx.close()
        else:
            tx.commit()
    return prepared_only


def _reconcile_child(repo: Path) -> dict[str, float]:
    return run_child(RECONCILE_CHILD, repo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=None, help="trials in parallel (default: one per CPU)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--without-summaries",
        action="store_true",
        help="set the summaries the nodes' WAL writers keep aside before run 1 (WALs as an older haios left them)",
    )
    args = parser.parse_args()
    nodes, records, trials = (12, 400, 4) if args.quick else (args.nodes, args.records, args.trials)
    work = Path(tempfile.mkdtemp(prefix="haios-reconcilebench-", dir=args.dir))
    try:
        started = time.perf_counter()
        repo = build_cluster(work, nodes, records)
        behind = half_done(repo)
        if args.without_summaries:
            for path in repo.glob("nodes/*/wal/" + SUMMARY_NAME):
                path.unlink()
        built = time.perf_counter() - started
        first = _reconcile_child(repo)
        second = _reconcile_child(repo)
        report = run_trials(work / "trials", count=trials, seed=1, jobs=args.jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = second["seconds"] / first["seconds"]
    rss = max(first["rss_kib"], second["rss_kib"]) / 1024
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(report.to_json()["outcomes"].items()))
    rows = [
        ("measure", "value", "target", "ok"),
        (
            f"reconcile 1 ({nodes} nodes x {records} records, {behind} to roll forward; "
            + ("no node summaries)" if args.without_summaries else "from the nodes' WAL summaries)"),
            f"{first['seconds']:.2f} s, exit {first['exit']:.0f}, {first['steps']:.0f} steps",
            "<= 30 s, exit 0",
            "yes" if first["seconds"] <= FIRST_RUN_TARGET and first["exit"] == 0 and first["steps"] == behind else "NO",
        ),
        (
            "reconcile 2 (nothing to do)",
            f"{second['seconds']:.2f} s, exit {second['exit']:.0f}, commit {second['commit']}",
            "no commit",
            "yes" if second["exit"] == 0 and second["commit"] is None else "NO",
        ),
        ("run 2 / run 1, time", f"{ratio:.3f}", "<= 0.1", "yes" if ratio <= 0.1 else "NO"),
        (
            "peak RSS of a run (largest process), run 1 / run 2",
            f"{first['rss_kib'] / 1024:.0f} / {second['rss_kib'] / 1024:.0f} MiB",
            "< 256 MiB",
            "yes" if rss < 256 else "NO",
        ),
        (
            f"sim trials ({trials}, every fault kind)",
            f"{len(report.failing)} violating; {report.per_minute:.0f} trials/minute ({outcomes})",
            "0 violating",
            "yes" if not report.failing else "NO",
        ),
    ]
    print_table(rows)
    for t in report.failing:
        print(f"violating seed {t.seed}: {t.outcome} {t.error} {t.violations}")
    print(f"\n(building the cluster took {built:.0f} s; trials took {report.seconds:.0f} s)")
    return 0 if all(row[3] == "yes" for row in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
