"""WAL benchmarks: haios against baselines measured in the same run, on the same filesystem.

    .venv/bin/python benchmarks/wal_bench.py [--dir DIR] [--quick] [--verify-gib 1.0]

1. Durable append latency of a 1 KiB record vs the floor: raw os.write + os.fdatasync of the same
   number of bytes appended to a plain file (target: median ratio <= 1.5; design budget p99 < 25 ms).
2. Bytes written per byte of payload (WAL framing and segment headers; design budget <= 2.2 for WAL,
   replicas and snapshots together).
3. Throughput of 8 threads appending durable records (group commit) vs SQLite in WAL mode with
   synchronous=FULL, 8 threads inserting the same payloads one transaction each (target >= 1.0).
4. `verify` throughput on a 1 GiB WAL vs reading the same bytes and computing zlib.crc32 over them
   in one process (target >= 0.5), the same with verify in one process (target >= 0.7), and the peak
   RSS of verify with its worker processes (target < 100 MiB). All run in child processes over a
   warm page cache, alternately, three times each. A WAL this size is verified by one worker process
   per CPU, each over a run of segments, unless told to use one.

Rounds alternate haios and baseline so that machine noise hits both; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import PEAK_RSS

from haios.wal import RecordType, Wal
from haios.wal import format as fmt

PAYLOAD_HEX = 470  # 940 hex characters: a ~1 KiB JSON record that lz4 cannot shrink


def payload(i: int) -> dict[str, object]:
    return {"name": f"step-{i}", "outcome": os.urandom(PAYLOAD_HEX).hex(), "node": "node-1", "g": 7, "ts": time.time()}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 1 and 2: durable append latency and write amplification ----------------------------------------


def bench_append(root: Path, ops: int, rounds: int) -> dict[str, float]:
    haios_lat: list[float] = []
    floor_lat: list[float] = []
    written = payload_bytes = 0
    for r in range(rounds):
        payloads = [payload(i) for i in range(ops)]
        record_size = fmt.RECORD_HEADER_SIZE + len(fmt.encode_payload(payloads[0])[0])
        # floor: the same number of bytes per operation, write + fdatasync
        path = root / f"floor-{r}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        block = os.urandom(record_size)
        for _ in range(ops):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            floor_lat.append(time.perf_counter() - t)
        os.close(fd)
        # haios: Wal.append(durable=True)
        with Wal.open(root / f"wal-{r}") as wal:
            wal.append(RecordType.STEP, payload(-1))  # the segment is created outside the timed loop
            start_bytes = wal.bytes_written
            for p in payloads:
                t = time.perf_counter()
                wal.append(RecordType.STEP, p, durable=True)
                haios_lat.append(time.perf_counter() - t)
            written += wal.bytes_written - start_bytes
        payload_bytes += sum(len(json.dumps(p, separators=(",", ":")).encode()) for p in payloads)
    return {
        "haios_p50": statistics.median(haios_lat),
        "haios_p99": pct(haios_lat, 0.99),
        "floor_p50": statistics.median(floor_lat),
        "floor_p99": pct(floor_lat, 0.99),
        "amplification": written / payload_bytes,
    }


# -- 3: group commit vs SQLite ------------------------------------------------------------------------


def _run_threads(threads: int, work: object) -> float:
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            work(i)  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def bench_concurrent(root: Path, threads: int, per_thread: int, rounds: int) -> dict[str, float]:
    haios_tput: list[float] = []
    sqlite_tput: list[float] = []
    total = threads * per_thread
    for r in range(rounds):
        payloads = [[json.dumps(payload(i)) for i in range(per_thread)] for _ in range(threads)]
        db = root / f"sqlite-{r}.db"
        setup = sqlite3.connect(db)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE wal (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        setup.commit()
        setup.close()

        def sqlite_work(i: int, db: Path = db, payloads: list[list[str]] = payloads) -> None:
            conn = sqlite3.connect(db, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")
            for text in payloads[i]:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO wal (payload) VALUES (?)", (text,))
                conn.execute("COMMIT")
            conn.close()

        sqlite_tput.append(total / _run_threads(threads, sqlite_work))

        with Wal.open(root / f"group-{r}") as wal:
            wal.append(RecordType.STEP, payload(-1))
            decoded = [[json.loads(t) for t in chunk] for chunk in payloads]

            def haios_work(i: int, wal: Wal = wal, decoded: list[list[dict[str, object]]] = decoded) -> None:
                for p in decoded[i]:
                    wal.append(RecordType.STEP, p, durable=True)

            haios_tput.append(total / _run_threads(threads, haios_work))
    return {"haios": statistics.median(haios_tput), "sqlite": statistics.median(sqlite_tput)}


# -- 4: verify vs read + crc32 -------------------------------------------------------------------------

# Peak RSS of verify counts the process itself plus every worker process it started (each worker is
# charged the largest worker's peak, since getrusage reports only the largest child).
VERIFY_CHILD = (
    PEAK_RSS
    + """
import os, resource, sys, time
from haios.wal import verify
from haios.wal.reader import PARALLEL_MIN_BYTES, list_segments
jobs = int(sys.argv[2]) or None
t = time.perf_counter(); report = verify(sys.argv[1], jobs=jobs); elapsed = time.perf_counter() - t
assert report.ok, report.corruption
segments = list_segments(__import__("pathlib").Path(sys.argv[1]))
workers = min(jobs or os.cpu_count() or 1, len(segments)) if report.bytes >= PARALLEL_MIN_BYTES else 0
workers = 0 if workers == 1 else workers
rss = peak_rss_kib() + workers * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(elapsed, report.records, report.bytes, rss)
"""
)

FLOOR_CHILD = (
    PEAK_RSS
    + """
import os, sys, time, zlib
paths = sorted(os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1]) if n.endswith(".wal"))
t = time.perf_counter(); total = 0
for path in paths:
    with open(path, "rb", buffering=0) as fh:
        crc = 0
        while chunk := fh.read(4 << 20):
            crc = zlib.crc32(chunk, crc); total += len(chunk)
elapsed = time.perf_counter() - t
print(elapsed, 0, total, peak_rss_kib())
"""
)


def _child(code: str, directory: Path, jobs: int = 0) -> tuple[float, int, int, int]:
    argv = [sys.executable, "-c", code, str(directory), str(jobs)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    elapsed, records, size, rss_kib = out.stdout.split()
    return float(elapsed), int(records), int(size), int(rss_kib)


def bench_verify(root: Path, gib: float, rounds: int) -> dict[str, float]:
    directory = root / "verify"
    target = int(gib * (1 << 30))
    blob = os.urandom(PAYLOAD_HEX).hex()
    build = time.perf_counter()
    with Wal.open(directory) as wal:
        i = 0
        while wal.bytes_written < target:
            wal.append(RecordType.STEP, {"name": f"step-{i}", "outcome": blob, "i": i}, durable=False)
            i += 1
    build = time.perf_counter() - build
    _child(FLOOR_CHILD, directory)  # warm the page cache
    v_times, one_times, f_times, rss = [], [], [], []
    records = size = 0
    for _ in range(rounds):
        f_elapsed, _, size, _ = _child(FLOOR_CHILD, directory)
        v_elapsed, records, _, v_rss = _child(VERIFY_CHILD, directory)
        one_elapsed, _, _, _ = _child(VERIFY_CHILD, directory, jobs=1)
        f_times.append(f_elapsed)
        v_times.append(v_elapsed)
        one_times.append(one_elapsed)
        rss.append(v_rss)
    return {
        "verify_s": statistics.median(v_times),
        "one_s": statistics.median(one_times),
        "floor_s": statistics.median(f_times),
        "bytes": size,
        "records": records,
        "rss_mib": max(rss) / 1024,
        "build_s": build,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--verify-gib", type=float, default=None, help="size of the verify WAL (default 1)")
    args = parser.parse_args()
    quick = args.quick
    root = Path(tempfile.mkdtemp(prefix="haios-walbench-", dir=args.dir))
    try:
        started = time.perf_counter()
        a = bench_append(root, ops=50 if quick else 1000, rounds=2 if quick else 5)
        c = bench_concurrent(root, threads=8, per_thread=10 if quick else 250, rounds=1 if quick else 3)
        v = bench_verify(root, gib=args.verify_gib or (0.01 if quick else 1.0), rounds=1 if quick else 3)
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)

    append_ratio = a["haios_p50"] / a["floor_p50"]
    group_ratio = c["haios"] / c["sqlite"]
    verify_ratio = v["floor_s"] / v["verify_s"]  # throughput ratio
    rows = [
        (
            "durable append p50 (1 KiB)",
            f"{a['haios_p50'] * 1e6:.0f} us",
            f"{a['floor_p50'] * 1e6:.0f} us (write+fdatasync)",
            f"{append_ratio:.2f}",
            "<= 1.5",
            append_ratio <= 1.5,
        ),
        (
            "durable append p99 (1 KiB)",
            f"{a['haios_p99'] * 1e3:.2f} ms",
            f"{a['floor_p99'] * 1e3:.2f} ms",
            "",
            "p99 < 25 ms",
            a["haios_p99"] < 0.025,
        ),
        ("bytes written / payload byte", f"{a['amplification']:.3f}", "1.000", "", "<= 2.2", a["amplification"] <= 2.2),
        (
            "8 threads, durable appends/s",
            f"{c['haios']:.0f}",
            f"{c['sqlite']:.0f} (SQLite WAL, FULL)",
            f"{group_ratio:.2f}",
            ">= 1.0",
            group_ratio >= 1.0,
        ),
        (
            f"verify {v['bytes'] / (1 << 30):.2f} GiB, {v['records']} records",
            f"{v['bytes'] / v['verify_s'] / 1e6:.0f} MB/s",
            f"{v['bytes'] / v['floor_s'] / 1e6:.0f} MB/s (read+crc32)",
            f"{verify_ratio:.2f}",
            ">= 0.5",
            verify_ratio >= 0.5,
        ),
        (
            "verify, one process",
            f"{v['bytes'] / v['one_s'] / 1e6:.0f} MB/s",
            f"{v['bytes'] / v['floor_s'] / 1e6:.0f} MB/s (read+crc32)",
            f"{v['floor_s'] / v['one_s']:.2f}",
            ">= 0.7",
            v["floor_s"] / v["one_s"] >= 0.7,
        ),
        ("verify peak RSS (with workers)", f"{v['rss_mib']:.0f} MiB", "", "", "< 100 MiB", v["rss_mib"] < 100),
    ]
    widths = [
        max(len(str(row[i])) for row in rows + [("measure", "haios", "baseline", "ratio", "target", "")])
        for i in range(5)
    ]
    header = ("measure", "haios", "baseline", "ratio", "target")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  ok")
    for row in rows:
        print(
            "  ".join(str(x).ljust(w) for x, w in zip(row[:5], widths, strict=True)) + ("  yes" if row[5] else "  NO")
        )
    print(f"\n(filesystem of {root.parent}; {elapsed:.0f} s in all; building the verify WAL took {v['build_s']:.0f} s)")
    return 0 if all(row[5] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
