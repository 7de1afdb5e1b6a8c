from __future__ import annotations

from pathlib import Path

import pytest
from helpers.wal import MakeWal

from haios.wal import RecordType, Wal, read_records


@pytest.fixture
def make_wal(tmp_path: Path) -> MakeWal:
    """Write ``n`` STEP records through ``Wal.append``; return the directory and the records read back."""
    counter = [0]

    def make(n: int = 20, *, segment_size: int = 1 << 20, blob: int = 40, name: str | None = None) -> tuple[Path, list]:  # type: ignore[type-arg]
        counter[0] += 1
        directory = tmp_path / (name or f"wal{counter[0]}")
        with Wal.open(directory, segment_size=segment_size) as wal:
            for i in range(n):
                wal.append(
                    RecordType.STEP, {"name": f"step-{i}", "outcome": "ok", "blob": "b" * (blob + i % 7)}, durable=False
                )
        return directory, list(read_records(directory))

    return make
