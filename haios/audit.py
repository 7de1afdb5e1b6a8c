"""The audit trail (SPEC §8): one git commit per reconcile run that changed anything.

The commit holds the updated ``status/`` files and the trace journals, a message that says in words
what was done, and trailers a script can parse (``git interpret-trailers --parse``)::

    Haios-Trace-Id: 3-construct-5f0c9a1e2b7d
    Haios-Result: CLEAN_EXIT
    Haios-Fencing-Token: 7
    Haios-Observed-Hash: sha256:…

A run with several traces repeats the first three trailers once per trace, in order. Only the given
paths are committed: whatever else the user has staged or changed stays as it was.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import RepoError
from .gitrepo import git_error, gitpython, identity_env
from .untrusted import inert

_TRAILER_VALUE = re.compile(r"[A-Za-z0-9._:@+=/-]{1,200}")

TRAILER_KEYS = ("Haios-Trace-Id", "Haios-Result", "Haios-Fencing-Token", "Haios-Observed-Hash")
_RETRIES = 20  # another reconciler may hold git's index lock for a moment


@dataclass
class AuditEntry:
    commit: str
    date: str
    subject: str
    body: str
    traces: list[dict[str, Any]] = field(default_factory=list)  # {trace_id, result, fencing_token}
    observed_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "date": self.date,
            "subject": self.subject,
            "traces": self.traces,
            "observed_hash": self.observed_hash,
        }


def parse_trailers(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The per-trace trailers and the observed hash of a commit message's trailer block: its last
    paragraph, as git reads trailers (a line that looks like a trailer in the body is not one)."""
    traces: list[dict[str, Any]] = []
    observed = None
    paragraphs = [p for p in text.strip().split("\n\n") if p.strip()]
    for line in paragraphs[-1].splitlines() if paragraphs else []:
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        value = value.strip()
        if key == "Haios-Trace-Id":
            traces.append({"trace_id": value})
        elif key == "Haios-Result" and traces:
            traces[-1]["result"] = value
        elif key == "Haios-Fencing-Token" and traces:
            traces[-1]["fencing_token"] = int(value) if value.isdigit() else value
        elif key == "Haios-Observed-Hash":
            observed = value
    return traces, observed


def _trailer(key: str, value: object) -> str:
    """One trailer line from a value haios made itself: one token, nothing that could start a line."""
    text = str(value)
    if not _TRAILER_VALUE.fullmatch(text):
        raise ValueError(f"{key}: {inert(text, newlines=False)!r} is not a value haios writes into a trailer")
    return f"{key}: {text}"


def commit_run(
    repo: Path, paths: list[str], subject: str, body: list[str], traces: list[dict[str, Any]], observed_hash: str
) -> str | None:
    """Commit ``paths`` (relative to ``repo``) with the audit message; None when nothing changed.

    The subject and every body line are escaped (a line break or a control character in a note,
    a node name or a compensator's output is written as a visible escape), so nothing read from
    outside can add a line, least of all a trailer; the trailers are written from checked values.
    """
    git = gitpython()
    trailers = []
    for t in traces:
        trailers += [
            _trailer("Haios-Trace-Id", t["trace_id"]),
            _trailer("Haios-Result", t["result"]),
            _trailer("Haios-Fencing-Token", t["fencing_token"]),
        ]
        if t.get("override"):
            trailers.append(_trailer("Haios-Override", t["override"]))  # the nonce of the signed override applied
    trailers.append(_trailer("Haios-Observed-Hash", observed_hash))
    lines = [inert(line, newlines=False) for line in body]
    text = "\n".join(lines).rstrip()
    message = f"{inert(subject, newlines=False)}\n\n{text}\n\n" + "\n".join(trailers) + "\n"
    existing = [p for p in paths if (repo / p).exists()]
    if not existing:
        return None
    last: Exception | None = None
    for _ in range(_RETRIES):
        try:
            with git.Repo(repo) as r:
                env = {**os.environ, **identity_env(r.config_reader())}
                r.git.add("--", *existing)
                if not r.git.diff("--cached", "--name-only", "--", *existing).strip():
                    return None
                r.git.commit("--no-verify", "--quiet", "-m", message, "--", *existing, env=env)
                sha: str = r.head.commit.hexsha
                return sha
        except git.GitCommandError as exc:
            last = exc
            if "index.lock" not in str(exc.stderr):
                break
            time.sleep(0.1)
    assert last is not None
    raise git_error(repo, "committing the audit record", last) from last


# what reconcile writes itself: never an edit of the desired state
_OWN = (":(exclude)status", ":(exclude).haios")


@dataclass(frozen=True)
class WorkTree:
    """What the git checkout of the desired-state repo holds besides its commit."""

    dirty: list[str]  # tracked desired-state files with uncommitted edits (staged or not)
    detached: bool  # HEAD names a commit, not a branch: a new commit would be on no branch


def worktree(repo: Path) -> WorkTree:
    """The uncommitted edits to tracked desired-state files, and the branch HEAD is on."""
    git = gitpython()
    try:
        with git.Repo(repo) as r:
            if not r.head.is_valid():
                return WorkTree([], False)  # no commit yet: the first one starts the branch
            listed = r.git.status("--porcelain", "--untracked-files=no", "-z", "--", ".", *_OWN)
            dirty = sorted(entry[3:] for entry in listed.split("\0") if len(entry) > 3)
            return WorkTree(dirty, r.head.is_detached)
    except git.GitError as exc:
        raise git_error(repo, "git status", exc) from exc


def require_committed(repo: Path, allow_dirty: bool, tree: WorkTree | None = None) -> list[str]:
    """Refuse a desired state that is not the committed one (unless ``allow_dirty``), and a detached
    HEAD, where an audit commit would be on no branch. Returns the uncommitted files allowed.
    ``tree``: the work tree as already read."""
    tree = tree if tree is not None else worktree(repo)
    if tree.dirty and not allow_dirty:
        shown = ", ".join(tree.dirty[:5]) + (f" and {len(tree.dirty) - 5} more" if len(tree.dirty) > 5 else "")
        raise RepoError(
            f"{repo}: uncommitted edits to the desired state ({shown}); reconcile acts on the committed one",
            hint=f"commit them (git -C {repo} commit -a), or pass --allow-dirty to act on them as they are",
        )
    if tree.detached:
        raise RepoError(
            f"{repo}: HEAD is detached: the audit commit would be on no branch",
            hint=f"check out the branch reconcile commits to (git -C {repo} switch main)",
        )
    return tree.dirty


def unpushed(repo: Path, remote: str | None = None) -> int | None:
    """How many commits of the current branch ``remote`` has not got, as far as the last fetch or
    push knows (None: unknown, no remote-tracking branch)."""
    git = gitpython()
    name = remote or "origin"
    try:
        with git.Repo(repo) as r:
            if r.head.is_detached or not r.head.is_valid():
                return None
            tracking = f"refs/remotes/{name}/{r.active_branch.name}"
            if not any(ref.path == tracking for ref in r.refs):
                return None
            return int(r.git.rev_list("--count", f"{tracking}..HEAD").strip() or 0)
    except (git.GitError, ValueError):
        return None


def push(repo: Path, remote: str | None = None) -> str:
    """Push the current branch (and the lease refs) to ``remote`` (default: the branch's upstream or origin)."""
    git = gitpython()
    try:
        with git.Repo(repo) as r:
            name = remote or "origin"
            if name not in [rm.name for rm in r.remotes]:
                raise RepoError(f"{repo}: no git remote {name!r} to push to", hint="git remote add origin URL")
            branch = r.active_branch.name
            r.git.push("--quiet", name, f"HEAD:refs/heads/{branch}")
            return name
    except git.GitCommandError as exc:
        raise git_error(repo, "git push", exc) from exc


def history(repo: Path, *, trace_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
    """The audit commits, newest first (only those with haios trailers; ``trace_id`` narrows them)."""
    git = gitpython()
    try:
        with git.Repo(repo) as r:
            if not r.head.is_valid():
                return []
            args = ["--format=%H%x00%aI%x00%s%x00%B%x1e", "--grep=^Haios-Trace-Id: "]
            if trace_id:
                args.append(f"--grep=^Haios-Trace-Id: {trace_id}$")
                args.append("--all-match")
            if limit:
                args.append(f"-n{limit}")
            out = r.git.log(*args)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise RepoError(
            f"{repo}: not a git repository, so it has no audit trail",
            hint="the desired-state repo is a git repository: pass --repo DIR, or create one with 'haios init DIR'",
        ) from exc
    except git.GitCommandError as exc:
        raise git_error(repo, "git log", exc) from exc
    entries = []
    for chunk in out.split("\x1e"):
        chunk = chunk.strip("\n")
        if not chunk:
            continue
        sha, date, subject, body = chunk.split("\x00", 3)
        traces, observed = parse_trailers(body)
        if not traces:
            continue
        entries.append(AuditEntry(sha, date, subject, body, traces, observed))
    return entries


def desired_commit(repo: Path) -> str | None:
    """The last commit that changed the desired state (anything outside ``status/``)."""
    git = gitpython()
    try:
        with git.Repo(repo) as r:
            if not r.head.is_valid():
                return None
            sha = r.git.log("-1", "--format=%H", "--", ".", ":(exclude)status").strip()
            return sha or None
    except git.GitError as exc:
        raise git_error(repo, "git log", exc) from exc


class Recorder(Protocol):
    """Where a run reads the desired state's version and records what it did: git
    (:class:`GitRecorder`), or memory (:class:`MemoryRecorder`)."""

    def require_committed(self, allow_dirty: bool) -> list[str]: ...

    def dirty(self) -> list[str]: ...

    def desired_commit(self) -> str | None: ...

    def commit_run(
        self, paths: list[str], subject: str, body: list[str], traces: list[dict[str, Any]], observed_hash: str
    ) -> str | None: ...

    def push(self, remote: str | None) -> str: ...

    def unpushed(self, remote: str | None) -> int | None: ...


@dataclass
class GitRecorder:
    """The audit trail in the desired-state repo's git history (the default). The work tree is read
    once per run: what the run refused or allowed is what its plan reports."""

    repo: Path
    _tree: WorkTree | None = field(default=None, repr=False)

    def _worktree(self) -> WorkTree:
        if self._tree is None:
            self._tree = worktree(self.repo)
        return self._tree

    def require_committed(self, allow_dirty: bool) -> list[str]:
        return require_committed(self.repo, allow_dirty, self._worktree())

    def dirty(self) -> list[str]:
        return self._worktree().dirty

    def desired_commit(self) -> str | None:
        return desired_commit(self.repo)

    def commit_run(
        self, paths: list[str], subject: str, body: list[str], traces: list[dict[str, Any]], observed_hash: str
    ) -> str | None:
        return commit_run(self.repo, paths, subject, body, traces, observed_hash)

    def push(self, remote: str | None) -> str:
        return push(self.repo, remote)

    def unpushed(self, remote: str | None) -> int | None:
        return unpushed(self.repo, remote)


@dataclass
class MemoryRecorder:
    """The audit trail in memory, for runs of the recovery core without git (tests, virtual runs):
    every commit a run would make, in ``commits``; the desired state is what is on disk."""

    desired: str | None = None  # the desired-state commit to report
    commits: list[dict[str, Any]] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)

    def require_committed(self, allow_dirty: bool) -> list[str]:
        return []

    def dirty(self) -> list[str]:
        return []

    def desired_commit(self) -> str | None:
        return self.desired

    def commit_run(
        self, paths: list[str], subject: str, body: list[str], traces: list[dict[str, Any]], observed_hash: str
    ) -> str | None:
        sha = f"{len(self.commits) + 1:040x}"
        self.commits.append(
            {"commit": sha, "paths": list(paths), "subject": subject, "body": list(body), "traces": list(traces)}
        )
        return sha

    def push(self, remote: str | None) -> str:
        name = remote or "origin"
        self.pushed.append(name)
        return name

    def unpushed(self, remote: str | None) -> int | None:
        return 0
