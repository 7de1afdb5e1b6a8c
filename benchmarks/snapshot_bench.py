"""Snapshot benchmark: haios's hard-link snapshot of data/ against `cp -a` and `rsync -a --link-dest`.

    .venv/bin/python benchmarks/snapshot_bench.py [--dir DIR] [--files 10000] [--mib 1024] [--quick]

The data set is FILES files in 100 directories, MIB MiB in all. Every method must leave a snapshot
that survives a crash, so each is timed through a durability point: haios fsyncs every directory it
creates (that is part of `snapshot.take`); `cp -a` and `rsync` are followed by `sync -f` on the
target's filesystem. rsync's --link-dest points at a previous snapshot of the same data (its best
case: every file unchanged, so every file becomes a hard link). Targets: haios at least as fast as
rsync --link-dest, and at least 20x faster than cp -a. A second data set with the same file count
and 1 KiB files shows that haios's time does not depend on the bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table

from haios.node import snapshot


def make_data(root: Path, files: int, total: int) -> None:
    data = root / "data"
    per_file = max(1, total // files)
    block = os.urandom(min(per_file, 1 << 20))
    for i in range(files):
        directory = data / f"d{i % 100:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"f{i:05d}", "wb") as fh:
            left = per_file
            while left > 0:
                chunk = block[: min(left, len(block))]
                fh.write(chunk)
                left -= len(chunk)
    (root / "snapshots").mkdir(exist_ok=True)
    subprocess.run(["sync", "-f", str(root)], check=True)


def time_haios(root: Path, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        snapshot.take(root, f"bench-{i}")
        times.append(time.perf_counter() - start)
        snapshot.drop(root, f"bench-{i}")
    return times


def time_command(root: Path, runs: int, argv_for: object) -> list[float]:
    times = []
    for i in range(runs):
        target = root / f"copy-{i}"
        start = time.perf_counter()
        subprocess.run(argv_for(target), check=True)  # type: ignore[operator]
        subprocess.run(["sync", "-f", str(root)], check=True)
        times.append(time.perf_counter() - start)
        shutil.rmtree(target)
        subprocess.run(["sync", "-f", str(root)], check=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    files, mib, runs = (200, 8, 1) if args.quick else (args.files, args.mib, 5)
    for tool in ("cp", "rsync", "sync"):
        if shutil.which(tool) is None:
            print(
                f"{tool} is not installed (Debian package {'rsync' if tool == 'rsync' else 'coreutils'})",
                file=sys.stderr,
            )
            return 2
    work = Path(tempfile.mkdtemp(prefix="haios-snapbench-", dir=args.dir))
    try:
        big, small = work / "big", work / "small"
        make_data(big, files, mib << 20)
        make_data(small, files, files * 1024)
        subprocess.run(["cp", "-al", str(big / "data"), str(big / "prev")], check=True)  # rsync's previous snapshot
        rows: dict[str, list[float]] = {"haios": [], "haios_small": [], "cp": [], "rsync": []}
        for _ in range(runs):  # interleaved rounds: noise hits every method alike
            rows["haios"] += time_haios(big, 1)
            rows["haios_small"] += time_haios(small, 1)
            rows["rsync"] += time_command(
                big, 1, lambda t: ["rsync", "-a", f"--link-dest={big / 'prev'}", f"{big / 'data'}/", str(t)]
            )
            rows["cp"] += time_command(big, 1, lambda t: ["cp", "-a", str(big / "data"), str(t)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    vs_rsync = med["rsync"] / med["haios"]
    vs_cp = med["cp"] / med["haios"]
    bytes_ratio = med["haios"] / med["haios_small"]
    table = [
        ("method", f"median s ({files} files, {mib} MiB)", "haios is faster by", "target", "ok"),
        ("haios snapshot (hard links)", f"{med['haios']:.3f}", "", "", ""),
        ("rsync -a --link-dest", f"{med['rsync']:.3f}", f"{vs_rsync:.1f}x", ">= 1x", "yes" if vs_rsync >= 1 else "NO"),
        ("cp -a", f"{med['cp']:.3f}", f"{vs_cp:.1f}x", ">= 20x", "yes" if vs_cp >= 20 else "NO"),
        (
            "haios, same files at 1 KiB",
            f"{med['haios_small']:.3f}",
            f"time ratio {bytes_ratio:.2f}",
            "~1 (bytes do not matter)",
            "yes" if bytes_ratio < 1.5 else "NO",
        ),
    ]
    print_table(table)
    return 0 if vs_rsync >= 1 and vs_cp >= 20 and bytes_ratio < 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
