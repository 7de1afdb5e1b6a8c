"""Shared test helpers."""

from __future__ import annotations

from collections.abc import Callable

from typer.testing import Result

Invoke = Callable[..., Result]
"""``cli(*args, env=None)``: run ``haios ARGS`` in-process."""
