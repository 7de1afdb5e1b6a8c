"""Shared test helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from typer.testing import Result

Invoke = Callable[..., Result]
"""``cli(*args, env=None)``: run ``haios ARGS`` in-process."""


def browse(page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``page`` (tests/system-deps.sh installs Debian's chromium). Its temporary
    directory is made relative to the test's working directory (its tmp dir): the socket Chromium
    puts there must fit in a Unix socket path, which a deep pytest tmp dir does not."""
    from . import subprocs

    found = shutil.which("chromium")
    assert found, "chromium is missing: tests/system-deps.sh installs Debian's chromium"
    args = [found, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", *extra]
    env = {**os.environ, "TMPDIR": "."}
    return subprocs.run([*args, page.as_uri()], capture_output=True, text=True, timeout=120, env=env)


def promtool() -> str:
    """Prometheus's promtool (tests/system-deps.sh installs Debian's prometheus package)."""
    found = shutil.which("promtool")
    assert found, "promtool is missing: tests/system-deps.sh installs Debian's prometheus package"
    return found


@contextmanager
def time_shifted(seconds: float) -> Iterator[None]:
    """Within the block, ``time.time()`` reads ``seconds`` later than it is: an in-process command
    (``cli(...)``) runs as if later (cron passes minutes apart) without sleeping."""
    real = time.time
    time.time = lambda: real() + seconds
    try:
        yield
    finally:
        time.time = real


def at(t: float) -> Callable[[], float]:
    """A clock that always reads ``t``: ``reconcile(repo, clock=at(now + 3601))`` happens at exactly
    that time, however long the run takes on a slow machine."""
    return lambda: t
