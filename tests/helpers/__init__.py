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


def at(t: float) -> Callable[[], float]:
    """A clock that always reads ``t``: ``reconcile(repo, clock=at(now + 3601))`` happens at exactly
    that time, however long the run takes on a slow machine."""
    return lambda: t
