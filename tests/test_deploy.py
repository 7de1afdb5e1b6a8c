"""The deployment files in examples/deploy/: every systemd unit passes ``systemd-analyze verify``, and
every haios command they and the crontab run is one this haios has, with those options."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers import Invoke, subprocs

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"
UNITS = sorted(p for p in DEPLOY.iterdir() if p.suffix in (".service", ".timer"))


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: tests/system-deps.sh installs Debian's systemd package"
    return found


def test_the_deployment_files_are_all_there() -> None:
    names = {p.name for p in DEPLOY.iterdir()}
    assert {
        "haios-agent@.service",
        "haios-reconcile.service",
        "haios-reconcile.timer",
        "haios-run.service",
        "crontab",
    } <= names


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_every_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    target = unit
    if unit.name.endswith("@.service"):  # a template is verified as an instance: a node root's escaped path
        target = tmp_path / unit.name.replace("@.service", "@var-lib-haios.service")
        shutil.copyfile(unit, target)
    else:
        shutil.copyfile(unit, tmp_path / unit.name)
        target = tmp_path / unit.name
    if unit.suffix == ".timer":  # a timer is verified with the service it starts beside it
        shutil.copyfile(
            DEPLOY / unit.name.replace(".timer", ".service"), tmp_path / unit.name.replace(".timer", ".service")
        )
    done = subprocs.run([_systemd_analyze(), "verify", target.name], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def _haios_commands() -> list[list[str]]:
    """Every haios command line in the units' Exec lines and in the crontab."""
    out = []
    for path in [*UNITS, DEPLOY / "crontab"]:
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                continue
            for part in re.split(r"&&|\|\||;|'", line):
                words = shlex.split(part.split(">>")[0].split(">/dev/null")[0]) if "haios " in part else []
                if "haios" in words:
                    out.append(words[words.index("haios") + 1 :])
    return out


def test_every_haios_command_they_run_exists(cli: Invoke) -> None:
    commands = _haios_commands()
    assert len(commands) >= 4
    for words in commands:
        args = [w.replace("/%I", "/var/lib/haios") for w in words]
        result = cli(*args, "--help")
        assert result.exit_code == 0, (words, result.output)
