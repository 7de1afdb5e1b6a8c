"""The harness itself: writes outside the test's tmp dir are caught."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_harness_write_outside_tmp_is_refused(tmp_path: Path, outside_writes: list[str]) -> None:
    outside = Path("/") / f"haios-harness-{os.getpid()}"
    with pytest.raises(PermissionError, match="outside its tmp dir"):
        open(outside, "w").close()  # noqa: SIM115
    assert outside_writes == [f"open '{outside}'"]
    outside_writes.clear()  # the refusal was the point of this test


def test_harness_write_inside_tmp_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine")
    assert (tmp_path / "ok.txt").read_text() == "fine"


def test_harness_home_points_into_tmp(tmp_path: Path) -> None:
    assert os.path.expanduser("~").startswith(str(tmp_path))
