"""Git, reached one way: through GitPython, with its errors translated to RepoError in one table.

The audit trail, the ``git`` coordination backend, ``haios init``, the budget commands and the
simulator's checks all go through here (:func:`gitpython`, :func:`run_git`, :func:`git_error`).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from .errors import RepoError

FALLBACK_NAME = "haios"
FALLBACK_EMAIL = "haios@localhost"


def gitpython() -> ModuleType:
    """The ``git`` module of GitPython; RepoError when there is no git to run."""
    try:
        import git
    except ImportError as exc:  # GitPython raises ImportError when no git executable is found
        raise RepoError(f"git is not available: {' '.join(str(exc).split())}", hint="install git") from exc
    return git


def git_error(repo: Path, doing: str, exc: BaseException) -> RepoError:
    """The RepoError for a GitPython error while ``doing`` something in ``repo`` (raise it ``from
    exc``: the cause stays attached). One table of GitPython's errors, in words."""
    git = gitpython()
    if isinstance(exc, (git.InvalidGitRepositoryError, git.NoSuchPathError)):
        return RepoError(
            f"{repo}: not a git repository ({doing})",
            hint="the desired-state repo is a git repository: pass --repo DIR, or create one with 'haios init DIR'",
        )
    if isinstance(exc, git.GitCommandError):
        detail = " ".join(str(exc.stderr or exc).split())
    else:
        detail = " ".join(str(exc).split()) or type(exc).__name__
    return RepoError(f"{repo}: {doing} failed: {detail}")


def run_git(path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, str, str]:
    """One git command in ``path``: (exit status, stdout, stderr), whatever the status. RepoError when
    git cannot be run at all, or runs longer than ``timeout`` seconds."""
    git = gitpython()
    try:
        status, out, err = git.Git(path).execute(
            ["git", *args],
            with_extended_output=True,
            with_exceptions=False,
            kill_after_timeout=timeout,
            env=env,
        )
    except (git.GitError, OSError) as exc:
        raise git_error(path, f"git {args[0]}", exc) from exc
    if status == -9 or (status != 0 and "Timeout:" in str(err)):
        raise RepoError(
            f"{path}: git {args[0]} did not finish within {timeout:g} s", hint="check the repo's disk and remote"
        )
    return int(status), str(out), str(err)


def identity_env(reader: object) -> dict[str, str]:
    """Author/committer variables when git has no identity configured (cron, CI, fresh machines)."""
    env: dict[str, str] = {}
    get = reader.get_value  # type: ignore[attr-defined]
    if not os.environ.get("GIT_AUTHOR_NAME") and not get("user", "name", ""):
        env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = FALLBACK_NAME
    if not os.environ.get("GIT_AUTHOR_EMAIL") and not get("user", "email", ""):
        env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = FALLBACK_EMAIL
    return env


def init_and_commit(path: Path, message: str) -> str:
    """``git init`` (branch main) at ``path``, add everything not ignored, commit; return the commit id."""
    git = gitpython()
    try:
        with git.Repo.init(path, initial_branch="main") as repo:
            env = identity_env(repo.config_reader())
            repo.git.add("--all")
            repo.git.commit("--no-verify", "--quiet", "-m", message, env={**os.environ, **env})
            sha: str = repo.head.commit.hexsha
            return sha
    except git.GitError as exc:
        raise git_error(path, "git init", exc) from exc


def commit_paths(path: Path, paths: list[str], message: str) -> str | None:
    """Commit ``paths`` (relative to ``path``) alone; None when they did not change."""
    git = gitpython()
    try:
        with git.Repo(path) as repo:
            repo.git.add("--", *paths)
            if not repo.git.diff("--cached", "--name-only", "--", *paths).strip():
                return None
            env = identity_env(repo.config_reader())
            repo.git.commit("--no-verify", "--quiet", "-m", message, "--", *paths, env={**os.environ, **env})
            sha: str = repo.head.commit.hexsha
            return sha
    except git.GitError as exc:
        raise git_error(path, "git commit", exc) from exc
