"""``haios wal``: the acceptance scenarios of the WAL issue, through the command line."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Invoke, subprocs
from helpers.wal import flip, segments

from haios.wal import RecordType, Wal, read_records


@pytest.fixture(scope="module")
def wal_10k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wal10k") / "wal"
    with Wal.open(directory) as wal:
        for i in range(10_000):
            wal.append(RecordType.STEP, {"name": f"step-{i}", "outcome": "ok", "node": "node-1"}, durable=False)
    return directory


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_wal_torn_tail_acceptance(cli: Invoke, wal_10k: Path, tmp_path: Path) -> None:
    directory = _copy(wal_10k, tmp_path / "wal")
    last = list(read_records(directory, from_lamport=10_000))[0]
    seg = directory / last.segment
    cut = random.Random(3).randrange(last.offset + 1, seg.stat().st_size)
    with open(seg, "r+b") as fh:
        fh.truncate(cut)
    result = cli("wal", "verify", directory)
    assert result.exit_code == 5
    assert result.stderr.startswith(
        f"error: {directory}: segment {last.segment} offset {last.offset} (lamport 10000): "
    )
    assert "[torn tail]" in result.stderr and f"run 'haios wal repair {directory}'" in result.stderr
    result = cli("wal", "repair", directory)
    assert result.exit_code == 0
    assert result.stdout.startswith(
        f"{directory}: torn tail cut at segment {last.segment} offset {last.offset}: kept 9999 records"
    )
    result = cli("wal", "verify", directory)
    assert (result.exit_code, result.stdout) == (0, f"{directory}: ok: 9999 records in 1 segment, lamport 1..9999\n")
    result = cli("wal", "inspect", directory, "--output", "ndjson")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 9999 and [x["lamport"] for x in lines] == list(range(1, 10_000))
    assert lines[-1]["name"] == "step-9998" and lines[-1]["type"] == "STEP"


def test_wal_bit_flip_acceptance(cli: Invoke, wal_10k: Path, tmp_path: Path) -> None:
    directory = _copy(wal_10k, tmp_path / "wal")
    target = next(iter(read_records(directory, from_lamport=5000)))
    seg = directory / target.segment
    flip(seg, target.offset + 36, 0x10)
    before = seg.read_bytes()
    result = cli("wal", "verify", directory)
    assert result.exit_code == 5
    assert result.stderr.startswith(
        f"error: {directory}: segment {target.segment} offset {target.offset} (lamport 5000): CRC mismatch [mid-log corruption]"
    )
    result = cli("wal", "repair", directory)
    assert result.exit_code == 5
    assert result.stderr.startswith(
        f"error: {directory}: refusing to repair segment {target.segment} offset {target.offset}"
    )
    assert seg.read_bytes() == before
    result = cli("wal", "repair", "--force", directory)
    assert result.exit_code == 0
    assert "kept 4999 records" in result.stdout and "dropped 5000 records that still verified" in result.stdout
    assert [r.lamport for r in read_records(directory)] == list(range(1, 5000))


def test_wal_verify_json(cli: Invoke, wal_10k: Path, tmp_path: Path) -> None:
    directory = _copy(wal_10k, tmp_path / "wal")
    data = json.loads(cli("wal", "verify", directory, "-o", "json").stdout)
    assert data["ok"] is True and data["records"] == 10_000 and data["corruption"] is None
    with open(segments(directory)[0], "ab") as fh:
        fh.write(b"\x00" * 10)
    result = cli("wal", "verify", directory, "-o", "json")
    assert result.exit_code == 5
    assert json.loads(result.stdout)["corruption"]["kind"] == "torn_tail"


def test_wal_inspect_text_and_json(cli: Invoke, tmp_path: Path) -> None:
    with Wal.open(tmp_path / "wal", clock=lambda: 1_790_000_000.0) as wal:
        wal.append(
            RecordType.BEGIN_PHASE, {"g": 1, "phase": "ANALYZE", "snapshot": "1-ANALYZE", "participants": ["n1"]}
        )
        wal.append(RecordType.COMMIT_PHASE, {"g": 1, "phase": "ANALYZE", "digest": "abc"})
    result = cli("wal", "inspect", tmp_path / "wal")
    seg = segments(tmp_path / "wal")[0].name
    assert result.stdout.splitlines()[0] == (
        f"       1 BEGIN_PHASE      {seg}:64         2026-09-21T14:13:20.000Z "
        '{"g":1,"phase":"ANALYZE","snapshot":"1-ANALYZE","participants":["n1"]}'
    )
    assert result.stderr == "2 records\n"
    data = json.loads(cli("wal", "inspect", tmp_path / "wal", "--from", "2", "-o", "json").stdout)
    assert data == [
        {
            "lamport": 2,
            "type": "COMMIT_PHASE",
            "segment": seg,
            "offset": data[0]["offset"],
            "ts": "2026-09-21T14:13:20.000Z",
            "g": 1,
            "phase": "ANALYZE",
            "digest": "abc",
        }
    ]


def test_wal_inspect_stops_at_corruption_with_exit_5(cli: Invoke, wal_10k: Path, tmp_path: Path) -> None:
    directory = _copy(wal_10k, tmp_path / "wal")
    target = next(iter(read_records(directory, from_lamport=20)))
    flip(directory / target.segment, target.offset + 40)
    result = cli("wal", "inspect", directory, "-o", "ndjson")
    assert result.exit_code == 5
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [x["lamport"] for x in lines[:-1]] == list(range(1, 20))
    assert lines[-1]["error"]["type"] == "WalCorruptError" and lines[-1]["error"]["exit_code"] == 5
    result = cli("wal", "inspect", directory, "-o", "json")
    assert result.exit_code == 5 and len(json.loads(result.stdout)) == 19
    assert result.stderr.startswith(f"error: {directory}: segment ")


def test_wal_node_root_and_missing_dir(cli: Invoke, tmp_path: Path) -> None:
    with Wal.open(tmp_path / "node/wal") as wal:
        wal.append(RecordType.STEP, {"name": "a", "outcome": "ok"})
    assert (
        cli("wal", "verify", tmp_path / "node").stdout
        == f"{tmp_path / 'node/wal'}: ok: 1 records in 1 segment, lamport 1..1\n"
    )
    result = cli("wal", "verify", tmp_path / "nope")
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_wal_tail_follows_a_live_writer(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    with Wal.open(directory, segment_size=4096) as wal:
        for i in range(5):
            wal.append(RecordType.STEP, {"name": f"before-{i}", "outcome": "ok"})
        proc = subprocs.spawn(
            [
                sys.executable,
                "-m",
                "haios",
                "wal",
                "tail",
                str(directory),
                "-n",
                "2",
                "-o",
                "ndjson",
                "--interval",
                "0.05",
                "--until",
                "60",
                "--timeout",
                "60",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = [proc.stdout.readline(), proc.stdout.readline()]  # the last two records, before any new one
        for i in range(55):  # crosses several segment rotations while tail follows
            wal.append(RecordType.STEP, {"name": f"after-{i}", "outcome": "x" * 100})
            if i % 10 == 0:
                time.sleep(0.05)
        out, _ = proc.communicate(timeout=60)
    lamports = [json.loads(line)["lamport"] for line in [*first, *out.splitlines()]]
    assert proc.returncode == 0
    assert lamports == list(range(4, 61))
