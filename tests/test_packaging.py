"""The wheel carries schemas, default policies and playbooks, and the code finds them there."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import subprocs

PROJECT = Path(__file__).parent.parent


@pytest.mark.slow
def test_packaging_wheel_ships_data_and_init_works_from_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    keep = ["haios", "schemas", "policies", "playbooks", "examples", "pyproject.toml", "setup.py", "README.md"]
    src.mkdir()
    for name in keep:
        path = PROJECT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(path, src / name)
    subprocs.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("haios-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in [
        "haios/_data/schemas/cluster.schema.json",
        "haios/_data/schemas/control-state.schema.json",
        "haios/_data/policies/thresholds.yaml",
        "haios/_data/policies/rbac.yaml",
        "haios/_data/playbooks/notify.yaml",
        "haios/py.typed",
        "haios/wal/_scan.pyi",
    ]:
        assert required in names, required
    if shutil.which("cc") or shutil.which("gcc"):  # the optional C loop of a verify, built with the wheel
        assert [n for n in names if n.startswith("haios/wal/_scan.") and n.endswith(".so")], names
    # Run init from the unpacked wheel alone, away from the checkout.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import haios; "
        "assert haios.__file__.startswith(sys.argv[1]), haios.__file__; "
        "r = haios.init_repo(sys.argv[2], nodes=2); print(haios.validate_repo(r.path).ok)"
    )
    out = subprocs.run(
        [sys.executable, "-I", "-c", code, str(site), str(tmp_path / "repo")],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "True"
