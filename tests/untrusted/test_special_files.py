"""FIFOs, devices and symlinks where haios expects a file: each is found promptly (the tests run
under a timeout) and named; nothing blocks on it or reads it without end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haios import controlfile
from haios.config import validate_repo
from haios.errors import InputError, IntegrityError
from haios.ops import build
from haios.ops.doctor import run_doctor
from haios.untrusted import read_regular


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    os.mkfifo(path)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


@pytest.mark.timeout(60)
def test_the_reader_refuses_fifos_devices_and_symlinks_out_of_their_directory(tmp_path: Path) -> None:
    _fifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="not a regular file \\(it is a FIFO\\)"):
        read_regular(tmp_path / "fifo", "desired")
    _link(tmp_path / "zero", "/dev/zero")
    with pytest.raises(InputError, match="symlink leaving"):
        read_regular(tmp_path / "zero", "desired")
    with pytest.raises(InputError, match="character device"):
        read_regular(tmp_path / "zero", "desired", within=Path("/"))
    (tmp_path / "inside").write_text("a: 1\n")
    _link(tmp_path / "alias", "inside")  # a symlink inside its directory is followed
    assert read_regular(tmp_path / "alias", "desired") == b"a: 1\n"
    (tmp_path / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(InputError, match="over the 1048576-byte limit"):
        read_regular(tmp_path / "big", "desired")
    assert read_regular(tmp_path / "missing", "desired") is None
    _fifo(tmp_path / "state.txt")
    with pytest.raises(IntegrityError, match="not a regular file"):
        controlfile.read(tmp_path / "state.txt")
    _link(tmp_path / "heartbeat", "/dev/zero")
    with pytest.raises(IntegrityError, match="symlink"):
        controlfile.read(tmp_path / "heartbeat")


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("rel", "make"),
    [
        ("overrides/2-analyze-000000000000.yaml", "fifo"),
        ("overrides/zero.yaml", "/dev/zero"),
        ("policies/rbac.yaml", "/etc/passwd"),
        ("schemas/zero.schema.json", "/dev/zero"),
        ("status/recoveries/2-analyze-000000000000.yaml", "fifo"),
        ("status/overrides/applied.yaml", "/dev/zero"),
        ("status/observed/node-1.json", "/dev/zero"),
        ("status/observed/runs.json", "fifo"),
        ("nodes/node-1/state.txt", "fifo"),
        ("nodes/node-1/heartbeat", "/dev/zero"),
        ("nodes/node-1/gossip", "fifo"),
        ("nodes/node-2/fence", "/dev/zero"),
        ("nodes/node-2/exec_status_2.txt", "fifo"),
    ],
)
def test_special_files_are_found_promptly_and_named(cluster: Path, rel: str, make: str) -> None:
    path = cluster / rel
    _fifo(path) if make == "fifo" else _link(path, make)
    validate_repo(cluster)
    try:
        build(cluster)
    except InputError as exc:
        raise AssertionError(exc) from exc
    except Exception as exc:  # noqa: BLE001 - only a run-level file may end plan, with its name
        assert rel in ("policies/rbac.yaml", "schemas/zero.schema.json") and Path(rel).name in str(exc), exc
    report = run_doctor(cluster)
    if not rel.startswith("status/observed/"):  # a cache that is not one is dropped, not reported
        assert any(Path(rel).name in f.summary for f in report.findings), [f.summary for f in report.findings]
