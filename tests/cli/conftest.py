from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Invoke
from typer.testing import CliRunner, Result

from haios.cli import app


@pytest.fixture
def cli() -> Invoke:
    """Run ``haios ARGS`` in-process; returns typer's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke
