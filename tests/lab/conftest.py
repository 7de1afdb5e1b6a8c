"""The five-host lab's fixture (tests/helpers/lab.py). These tests sit apart, and early in the
suite's order, so that the longest of them run beside the rest rather than after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.lab import Lab, down, up
from helpers.netns import need_namespaces


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[Lab]:
    """The lab, taken down after the test."""
    need_namespaces()
    lab = up(tmp_path)
    try:
        yield lab
    finally:
        down(lab)
