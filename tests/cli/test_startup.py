"""What a command imports when it starts: only what it needs. ``haios --version`` imports no
command at all; what a phase's command calls per sub-step (``haios node step|side-effect|intent``)
imports neither the reconciler nor GitPython, jsonschema, paramiko, prometheus-client or rich, nor
the command line itself (typer, pydantic) nor SSH. (Times are the benchmark's business:
``benchmarks/startup_bench.py``.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import subprocs

from haios.node import Node, init_node_root

HEAVY = {"git", "jsonschema", "paramiko", "prometheus_client", "haios.ops", "haios.recovery", "haios.detect"}


def _imported(*argv: str, cwd: Path) -> set[str]:
    """The modules ``python -X importtime -m haios ARGV`` imported (it must exit 0)."""
    proc = subprocs.run(
        [sys.executable, "-X", "importtime", "-m", "haios", *argv], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.fixture
def open_phase(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    init_node_root(root, "n1", {"cluster": "c", "max_g": None})
    Node(root).begin(1, "ANALYZE", participants=["n1"]).close()
    (tmp_path / "content.txt").write_text("x\n")
    return root


def test_version_imports_no_command(tmp_path: Path) -> None:
    modules = _imported("--version", cwd=tmp_path)
    assert "haios" in modules
    assert not modules & {"typer", "rich", "haios.cli._app", *HEAVY}


@pytest.mark.parametrize(
    "command",
    [
        ["step", "download"],
        ["side-effect", "--key", "vm-1", "--kind", "cloud.vm", "--compensator", "cloud-vm-delete"],
        ["intent", "etc/app.conf", "--content-file", "../content.txt"],
    ],
)
def test_a_sub_step_imports_the_node_side_only(open_phase: Path, command: list[str]) -> None:
    verb, *rest = command
    modules = _imported("node", verb, str(open_phase), "--g", "1", "--phase", "ANALYZE", *rest, cwd=open_phase)
    assert "haios.node.transaction" in modules  # it did its work
    heavy = {m for m in modules if m in HEAVY or any(m.startswith(f"{h}.") for h in HEAVY)}
    assert not heavy, sorted(heavy)
    assert "rich" not in modules  # its output is JSON: no terminal rendering
    assert not modules & {"typer", "pydantic", "haios.cli._app", "haios.transport.ssh", "haios.config.validate"}


def test_every_command_is_still_listed_and_reachable(tmp_path: Path) -> None:
    from haios.cli._app import COMMANDS

    proc = subprocs.run([sys.executable, "-m", "haios", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f" {name} " in proc.stdout, name
    typo = subprocs.run([sys.executable, "-m", "haios", "reconcil"], capture_output=True, text=True, timeout=120)
    assert typo.returncode == 1 and "No such command 'reconcil'. Did you mean 'reconcile'?" in typo.stderr
