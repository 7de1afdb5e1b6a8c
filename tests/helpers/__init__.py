"""Shared test helpers."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from typer.testing import Result

Invoke = Callable[..., Result]
"""``cli(*args, env=None)``: run ``haios ARGS`` in-process."""


def promtool() -> str:
    """Prometheus's promtool (tests/system-deps.sh installs Debian's prometheus package)."""
    found = shutil.which("promtool")
    assert found, "promtool is missing: tests/system-deps.sh installs Debian's prometheus package"
    return found
