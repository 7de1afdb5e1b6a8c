"""Git reached one way (haios.gitrepo): exit status and words of a failure, a bounded wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from haios.errors import RepoError
from haios.gitrepo import init_and_commit, run_git


def test_run_git_gives_the_status_and_words_of_a_failure(tmp_path: Path) -> None:
    status, out, err = run_git(tmp_path, "rev-parse", "--verify", "HEAD")
    assert status != 0 and out == "" and "not a git repository" in err


def test_run_git_runs_in_the_repo(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    sha = init_and_commit(tmp_path, "first")
    assert run_git(tmp_path, "rev-parse", "HEAD") == (0, sha, "")


def test_run_git_ends_a_command_that_hangs(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    init_and_commit(tmp_path, "first")
    with pytest.raises(RepoError, match=r"did not finish within 0.5 s"):
        run_git(tmp_path, "-c", "alias.nap=!sleep 30", "nap", timeout=0.5)
