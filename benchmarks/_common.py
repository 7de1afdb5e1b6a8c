"""What the benchmark scripts share: running a measured child process, printing the result table."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_child(script: str, repo: Path) -> dict[str, Any]:
    """Run ``python -c SCRIPT REPO`` after a ``sync`` (no writeback of the setup pending); its last
    stdout line is a JSON object of measurements."""
    subprocess.run(["sync"], check=True)
    out = subprocess.run([sys.executable, "-c", script, str(repo)], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells, each column left-aligned to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
