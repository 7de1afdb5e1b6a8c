"""Worker process of a parallel ``verify``: verifies a run of segments and prints the report as JSON.

python -m haios.wal._worker DIRECTORY ENDS_WAL(0|1) SEGMENT...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .reader import list_segments, verify_segments


def main(argv: list[str]) -> int:
    directory, ends_wal, names = Path(argv[0]), argv[1] == "1", set(argv[2:])
    segments = [s for s in list_segments(directory) if s.name in names]
    report = verify_segments(directory, segments, ends_wal=ends_wal)
    sys.stdout.write(json.dumps(report.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
