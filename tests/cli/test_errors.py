"""The central error handler: exit codes, one-line messages, crash logs, --debug, usage errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import Invoke, subprocs

import haios.cli.validate as validate_cmd
from haios import __version__
from haios.errors import (
    EXIT_VERIFICATION,
    BlockedError,
    FencedError,
    HaiosError,
    IntegrityError,
    Interrupted,
    LockHeldError,
    VerificationError,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (HaiosError("x"), 1),
        (VerificationError("x"), 5),
        (IntegrityError("f", "x"), 5),
        (BlockedError("x"), 3),
        (LockHeldError("x"), 4),
        (FencedError("x"), 4),
        (Interrupted("x"), 130),
    ],
)
def test_errors_map_to_spec_exit_codes(
    cli: Invoke, repo: Path, monkeypatch: pytest.MonkeyPatch, error: HaiosError, code: int
) -> None:
    def raiser(path: object) -> None:
        raise error

    monkeypatch.setattr(validate_cmd, "validate_repo", raiser)
    result = cli("--repo", repo, "validate")
    assert result.exit_code == code
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_integrity_error_message_names_file_and_fix(cli: Invoke, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def raiser(path: object) -> None:
        raise IntegrityError("nodes/node-1/state.txt", "integrity check failed: sha256 does not match the body (v=1)")

    monkeypatch.setattr(validate_cmd, "validate_repo", raiser)
    result = cli("--repo", repo, "validate")
    assert result.exit_code == EXIT_VERIFICATION
    assert result.stderr == (
        "error: nodes/node-1/state.txt: integrity check failed: sha256 does not match the body (v=1) "
        "(hint: the file was corrupted or edited by hand; restore it from a snapshot or a peer, or run "
        f"'haios --repo {repo} doctor')\n"
    )


def test_unexpected_exception_writes_crash_log(
    cli: Invoke, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def raiser(path: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(validate_cmd, "validate_repo", raiser)
    result = cli("--repo", repo, "validate")
    assert result.exit_code == 1
    logs = list((tmp_path / "logs").glob("haios-crash-*.log"))
    assert len(logs) == 1
    assert result.stderr == (
        f"error: internal error: RuntimeError: boom (hint: the traceback is in {logs[0]}; please report this bug)\n"
    )
    assert "Traceback" not in result.output
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text


def test_debug_shows_traceback(cli: Invoke, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def raiser(path: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(validate_cmd, "validate_repo", raiser)
    result = cli("--debug", "--repo", repo, "validate")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "RuntimeError: boom" in result.stderr
    assert not (tmp_path / "logs").exists()


def test_unknown_option_is_exit_one(cli: Invoke) -> None:
    result = cli("validate", "--bogus")
    assert result.exit_code == 1
    assert result.stderr == "error: No such option: --bogus (hint: see 'haios validate --help')\n"


def test_unknown_command_suggests(cli: Invoke) -> None:
    result = cli("validat")
    assert result.exit_code == 1
    assert result.stderr == "error: No such command 'validat'. Did you mean 'validate'? (hint: see 'haios --help')\n"


def test_no_arguments_prints_help_and_exits_one(cli: Invoke) -> None:
    result = cli()
    assert result.exit_code == 1
    assert "Usage: haios [OPTIONS] COMMAND [ARGS]..." in result.output


def test_version(cli: Invoke) -> None:
    result = cli("--version")
    assert (result.exit_code, result.stdout) == (0, f"haios {__version__}\n")


def test_version_and_help_need_no_repo_and_version_imports_nothing_heavy(tmp_path: Path) -> None:
    """In a directory that is no repo: ``--version`` answers without importing the command line or
    any heavy library (the import budget), and ``--help`` works."""
    proc = subprocs.run(
        [sys.executable, "-X", "importtime", "-m", "haios", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, f"haios {__version__}\n")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = {"typer", "rich", "git", "jsonschema", "paramiko", "prometheus_client", "ruamel.yaml", "haios.cli._app"}
    assert not imported & heavy, sorted(imported & heavy)
    helped = subprocs.run(
        [sys.executable, "-m", "haios", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "reconcile" in helped.stdout


def test_help_exits_zero(cli: Invoke) -> None:
    result = cli("--help")
    assert result.exit_code == 0 and "validate" in result.stdout


def test_console_script_runs_and_maps_exit_code(tmp_path: Path) -> None:
    proc = subprocs.run(
        [sys.executable, "-m", "haios", "--repo", str(tmp_path), "validate"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {tmp_path}: not a haios desired-state repo")
    assert "Traceback" not in proc.stderr


def test_ctrl_c_is_exit_130_with_a_message(cli: Invoke, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def raiser(path: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_cmd, "validate_repo", raiser)
    result = cli("--repo", repo, "validate")
    assert result.exit_code == 130
    assert result.stderr == "error: interrupted\n"


def test_every_hint_is_runnable_as_printed(cli: Invoke, repo: Path, tmp_path: Path) -> None:
    """A usage hint names the command that was run, not a placeholder; a hint naming a haios command
    carries the --repo the user passed."""
    result = cli("--repo", repo, "node", "rejoin", "node-7")
    assert result.exit_code == 1
    assert "hint: see 'haios node rejoin --help'" in result.stderr
    assert "COMMAND" not in result.stderr
    result = cli("--repo", repo, "reconcile", "--dry-run", "--plan", tmp_path / "p.json")
    assert "hint: see 'haios reconcile --help'" in result.stderr
    (repo / "policies/thresholds.yaml").write_text("apiVersion: haios/v1\nkind: Thresholds\nphi: 3\n")
    result = cli("--repo", repo, "plan")
    assert result.exit_code == 1
    assert f"'haios --repo {repo} validate'" in result.stderr  # where the user's repo is, not the current directory
