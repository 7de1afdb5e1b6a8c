"""Detection benchmarks: doctor over many nodes (first and incremental pass), and detection latency.

    .venv/bin/python benchmarks/detect_bench.py [--dir DIR] [--nodes 1000] [--records 10000] [--quick]

1. `haios doctor` over NODES local nodes whose WALs hold RECORDS records each (one WAL written
   through `Wal.append` — whole phases, BEGIN, INTENT, PREPARE, COMMIT — and copied to every node).
   A first pass starts from the summary each node's WAL writer keeps (it checks the CRC-32 of every
   byte); then, with those summaries set aside (a WAL as an older haios left it), the full first pass
   reads everything; then one more transition is logged on every node and a second pass runs.
   Targets: the second pass reads <= 5 % of the bytes of the first and takes <= 20 % of its time.
   Wall time and peak RSS of each pass come from a child process. Before it, one node's first pass
   in one process (records a second, target 225,000: three times the 75,000 measured before the
   reader was worked on), beside the floor: reading the same WAL files and computing zlib.crc32;
   once starting from the node's own summary, once folding every record.
2. Detection latency in the simulator: a node's writer is SIGKILLed mid-phase; doctor polls every
   POLL seconds; the latency from the kill to the wal_gap finding is compared with the detector's own
   timeout for that phase (target: latency <= 1.1 x timeout + one polling interval).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from _common import PEAK_RSS, print_table, run_child

from haios import controlfile
from haios.config import load_repo
from haios.node import Node
from haios.ops.doctor import run_doctor
from haios.ops.init import init_repo
from haios.sim.simulator import sim_init, sim_run
from haios.wal import RecordType, Wal
from haios.wal.summary import SUMMARY_NAME

POLL = 0.1

DOCTOR_CHILD = (
    PEAK_RSS
    + """
import json, sys, time
from haios.ops.doctor import run_doctor
t = time.perf_counter(); report = run_doctor(sys.argv[1]); elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "bytes": report.bytes_read, "healthy": report.healthy,
                  "findings": len(report.findings), "rss_kib": peak_rss_kib()}))
"""
)


def _doctor_child(repo: Path) -> dict[str, float]:
    return run_child(DOCTOR_CHILD, repo)


def write_history(root: Path, node: str, records: int) -> None:
    """Append whole phases (4 records each: BEGIN, INTENT, PREPARE, COMMIT) to the WAL of the node
    root ``root`` until it holds ``records`` records; its state.txt then says where they end."""
    g = lamport = 0
    now = time.time() - 86400
    with Wal.open(root / "wal") as wal:
        while lamport < records:
            g += 1
            for phase in ("ANALYZE", "BLUEPRINT", "CONSTRUCT", "VALIDATE", "IDLE"):
                common = {"node": node, "g": g, "phase": phase, "trace_id": f"t-{g}-{phase}", "vc": {node: lamport + 1}}
                now += 1
                wal.append(
                    RecordType.BEGIN_PHASE,
                    {**common, "ts": now, "snapshot": f"{g}-{phase}", "participants": [node]},
                )
                wal.append(
                    RecordType.INTENT,
                    {
                        **common,
                        "ts": now,
                        "seq": 1,
                        "op": "write",
                        "path": f"{phase.lower()}.conf",
                        "expected_version": g - 1 or None,
                        "sha256": "0" * 64,
                        "content_b64": "Zz0xCg==",
                    },
                    durable=False,
                )
                wal.append(RecordType.PREPARE, {**common, "ts": now, "intent_count": 1, "digest": "d"})
                lamport = wal.append(RecordType.COMMIT_PHASE, {**common, "ts": now + 0.5, "digest": "d"})
        position = wal.position()
    state, version = controlfile.read_mapping(root / "state.txt")
    marks = {"wal_cursor": asdict(position), "vc": {node: lamport}}
    controlfile.write_mapping(root / "state.txt", {**state, "g": g, "ph": "IDLE", **marks}, expected_version=version)


def build_cluster(root: Path, nodes: int, records: int) -> Path:
    """A repo of NODES local nodes whose WALs hold RECORDS records of whole phases each."""
    repo = init_repo(root / "repo", cluster="bench", nodes=nodes).path
    config = load_repo(repo)
    roots = [n.local_root(repo) for n in config.cluster.nodes]
    template = roots[0]
    write_history(template, "node-1", records)
    for other in roots[1:]:
        shutil.rmtree(other)
        subprocess.run(["cp", "-a", str(template), str(other)], check=True)
        # a copied root is that node's own: its state.txt names it (doctor checks whose root it is)
        copied, copied_version = controlfile.read_mapping(other / "state.txt")
        controlfile.write_mapping(other / "state.txt", {**copied, "node": other.name}, expected_version=copied_version)
    return repo


def one_more_transition(repo: Path) -> None:
    config = load_repo(repo)
    for spec in config.cluster.nodes:
        node = Node(spec.local_root(repo))
        state, _ = node.state()
        g = state["g"] + 1
        with node.begin(g, "ANALYZE", participants=[node.name]) as tx:
            tx.prepare()
            tx.commit()


# One node's first pass in one process (no cache), and the floor: reading the same WAL files and
# computing zlib.crc32 over them, in the same process, one after the other, best of ROUNDS each.
ONE_NODE_CHILD = """
import json, shutil, sys, time, zlib
from pathlib import Path
from haios.ops.observe import observe_node
from haios.wal import verify
repo = Path(sys.argv[1]); root = repo / "nodes" / "node-1"
records = verify(root / "wal").records
haios_s = floor_s = float("inf")
for _ in range(3):
    shutil.rmtree(repo / "status" / "observed", ignore_errors=True)
    t = time.perf_counter(); observe_node(repo, "node-1", root); haios_s = min(haios_s, time.perf_counter() - t)
    t = time.perf_counter()
    for seg in sorted((root / "wal").glob("*.wal")):
        crc = 0
        with open(seg, "rb") as fh:
            while chunk := fh.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
    floor_s = min(floor_s, time.perf_counter() - t)
print(json.dumps({"records": records, "haios_s": haios_s, "floor_s": floor_s}))
"""
FIRST_PASS_TARGET = 225_000  # records a second per process: 3x the 75,000 measured before the work on it


def bench_doctor(root: Path, nodes: int, records: int) -> dict[str, float]:
    started = time.perf_counter()
    repo = build_cluster(root, nodes, records)
    built = time.perf_counter() - started
    own = _doctor_child(repo)  # every node's WAL writer left its summary: the pass starts from it
    one_own = run_child(ONE_NODE_CHILD, repo)
    shutil.rmtree(repo / "status" / "observed")
    kept = [(path, path.with_name(path.name + ".kept")) for path in sorted(repo.glob("nodes/*/wal/" + SUMMARY_NAME))]
    for path, aside in kept:  # the full first pass: WALs as an older haios left them, with no summary
        path.rename(aside)
    one = run_child(ONE_NODE_CHILD, repo)
    first = _doctor_child(repo)
    for path, aside in kept:
        aside.rename(path)
    one_more_transition(repo)
    second = _doctor_child(repo)
    return {"built_s": built, "first": first, "second": second, "one": one, "own": own, "one_own": one_own}  # type: ignore[dict-item]


def bench_latency(root: Path, trials: int) -> list[tuple[float, float]]:
    """(latency, timeout) per trial: from the kill to the wal_gap finding."""
    results = []
    for trial in range(trials):
        directory = root / f"lat{trial}"
        sim_init(directory, 3)
        report = sim_run(directory, iterations=1, seed=trial, faults={"kill": 1.0})
        kill = next(f for f in report.faults if f["fault"] == "kill")
        if kill["point"] == "after_some_commits" or report.stopped_at is None:
            continue  # a coordinator death is a partial commit, measured by its own detector
        killed_at = float(kill.get("ts", time.time()))
        with open(directory / ".sim/faults.jsonl") as fh:
            killed_at = max(json.loads(line)["ts"] for line in fh if json.loads(line)["fault"] == "kill")
        deadline = time.time() + 60
        timeout = None
        while time.time() < deadline:
            found = [f for f in run_doctor(directory).findings if f.kind == "wal_gap"]
            if found:
                timeout = found[0].evidence["timeout_s"]
                results.append((time.time() - killed_at, float(timeout)))
                break
            time.sleep(POLL)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    nodes, records, trials = (20, 200, 2) if args.quick else (args.nodes, args.records, 6)
    work = Path(tempfile.mkdtemp(prefix="haios-detectbench-", dir=args.dir))
    try:
        d = bench_doctor(work, nodes, records)
        latencies = bench_latency(work, trials)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first, second, one, own = d["first"], d["second"], d["one"], d["own"]  # type: ignore[index]
    per_process = one["records"] / one["haios_s"]  # type: ignore[index]
    floor_rate = one["records"] / one["floor_s"]  # type: ignore[index]
    one_own = d["one_own"]  # type: ignore[index]
    own_rate = one_own["records"] / one_own["haios_s"]  # type: ignore[index]
    own_floor = one_own["records"] / one_own["floor_s"]  # type: ignore[index]
    byte_ratio = second["bytes"] / first["bytes"]  # type: ignore[index]
    time_ratio = second["seconds"] / first["seconds"]  # type: ignore[index]
    ratios = [lat / (timeout * 1.1 + POLL) for lat, timeout in latencies]
    rows = [
        ("measure", "value", "target", "ok"),
        (
            f"doctor pass 1 ({nodes} nodes x {records} records, no node summary)",
            f"{first['seconds']:.1f} s, {first['bytes'] / 1e6:.0f} MB read, RSS {first['rss_kib'] / 1024:.0f} MiB",
            "",
            "",
        ),  # type: ignore[index]
        (
            "doctor pass 1 from the nodes' own WAL summaries",
            f"{own['seconds']:.1f} s, {own['bytes'] / 1e6:.2f} MB read, RSS {own['rss_kib'] / 1024:.0f} MiB; "
            f"{own['seconds'] / first['seconds']:.3f} x the full pass 1",
            "",
            "",
        ),  # type: ignore[index]
        (
            "doctor pass 2 (one new transition per node)",
            f"{second['seconds']:.2f} s, {second['bytes'] / 1e6:.2f} MB read, RSS {second['rss_kib'] / 1024:.0f} MiB",
            "",
            "",
        ),  # type: ignore[index]
        (
            f"first pass, one node in one process ({one['records']} records)",  # type: ignore[index]
            f"{per_process:,.0f} records/s; read + crc32 {floor_rate:,.0f} records/s; ratio "
            f"{per_process / floor_rate:.3f}",
            f">= {FIRST_PASS_TARGET:,} records/s",
            "yes" if per_process >= FIRST_PASS_TARGET else "NO",
        ),
        (
            "same node, from its own WAL summary",
            f"{own_rate:,.0f} records/s; read + crc32 {own_floor:,.0f} records/s; ratio {own_rate / own_floor:.3f}",
            "",
            "",
        ),
        ("pass 2 / pass 1, bytes", f"{byte_ratio:.4f}", "<= 0.05", "yes" if byte_ratio <= 0.05 else "NO"),
        ("pass 2 / pass 1, time", f"{time_ratio:.3f}", "<= 0.20", "yes" if time_ratio <= 0.2 else "NO"),
        (
            f"detection latency / (1.1 x timeout + {POLL} s), median of {len(ratios)}",
            f"{statistics.median(ratios):.2f} (latency {statistics.median([lat for lat, _ in latencies]):.2f} s, timeout {statistics.median([t for _, t in latencies]):.2f} s)"
            if ratios
            else "no trial",
            "<= 1.0",
            "yes" if ratios and max(ratios) <= 1.0 else "NO",
        ),
    ]
    print_table(rows)
    print(f"\n(building the cluster took {d['built_s']:.0f} s)")
    return 0 if all(row[3] in ("", "yes") for row in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
