"""The ``git`` coordination backend (SPEC §6.2): leases as refs in the desired-state repo.

The cluster's barrier (the last transition committed everywhere, and ``g``) is the ref
``refs/haios/barrier`` in the same way. Each shard's lease is a ref ``refs/haios/locks/<shard>`` pointing at a commit whose message is the
lease as JSON and whose parent is the previous lease, so ``git log refs/haios/locks/CONSTRUCT`` is the
shard's whole history of acquisitions, renewals and releases. Every change is a compare-and-swap:
``git update-ref <ref> <new> <old>`` locally; with a remote, ``git push --atomic
--force-with-lease=<ref>:<old>`` to it (the remote's copy is then the one that counts, and the local
ref mirrors it). A swap that loses the race is retried from a fresh read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import BarrierMoved, FencedError, LockHeldError, RepoError
from ..gitrepo import run_git
from .base import Barrier, Lease, check_advance, held_error

REF_PREFIX = "refs/haios/locks/"
BARRIER_REF = "refs/haios/barrier"
_ENV = {
    "GIT_AUTHOR_NAME": "haios",
    "GIT_AUTHOR_EMAIL": "haios@localhost",
    "GIT_COMMITTER_NAME": "haios",
    "GIT_COMMITTER_EMAIL": "haios@localhost",
}


class _Lost(Exception):
    """A compare-and-swap found the ref changed."""


class GitBackend:
    def __init__(self, repo: Path, *, remote: str | None = None, attempts: int = 20) -> None:
        self.repo = Path(repo)
        self.remote = remote
        self.attempts = attempts
        self._empty_tree: str | None = None

    # -- plumbing --------------------------------------------------------------------------------

    def _git(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        """(status, stdout, stderr) of one git command in the repo; RepoError for a failure when ``check``."""
        status, out, err = run_git(self.repo, *args, env=_ENV)
        if check and status != 0:
            raise RepoError(f"{self.repo}: git {' '.join(args[:2])} failed: {' '.join(err.split())}")
        return status, out, err

    def _ref(self, shard: str) -> str:
        return shard if shard.startswith("refs/") else REF_PREFIX + shard

    def _oid(self, shard: str) -> str | None:
        _, out, _ = self._git("rev-parse", "--verify", "--quiet", self._ref(shard) + "^{commit}", check=False)
        return out.strip() or None

    def _body(self, oid: str) -> Any:
        return json.loads(self._git("cat-file", "commit", oid)[1].split("\n\n", 1)[1])

    def _load(self, oid: str) -> Lease:
        body = self._git("cat-file", "commit", oid)[1].split("\n\n", 1)[1]
        try:
            return Lease.from_dict(json.loads(body))
        except (ValueError, TypeError) as exc:
            raise RepoError(f"{self.repo}: lease commit {oid} is not a lease ({exc})") from exc

    def _fetch(self) -> None:
        if self.remote:
            self._git("fetch", "--quiet", self.remote, "+refs/haios/*:refs/haios/*")  # the leases and the barrier

    def _swap(self, shard: str, lease: Lease | Barrier, old: str | None) -> None:
        if self._empty_tree is None:
            self._empty_tree = self._git("hash-object", "-t", "tree", "-w", os.devnull)[1].strip()
        parents = ["-p", old] if old else []
        message = json.dumps(lease.as_dict(), sort_keys=True)
        new = self._git("commit-tree", self._empty_tree, *parents, "-m", message)[1].strip()
        ref = self._ref(shard)
        if self.remote:
            status, _, err = self._git(
                "push",
                "--quiet",
                "--atomic",
                f"--force-with-lease={ref}:{old or ''}",
                self.remote,
                f"{new}:{ref}",
                check=False,
            )
            if status != 0:
                if "stale info" in err or "rejected" in err:
                    raise _Lost()
                raise RepoError(f"{self.repo}: pushing {ref} to {self.remote} failed: {' '.join(err.split())}")
            self._git("update-ref", ref, new)
            return
        status, _, err = self._git("update-ref", "-m", f"haios {shard}", ref, new, old or "", check=False)
        if status != 0:
            if self._oid(shard) != old:
                raise _Lost()
            raise RepoError(f"{self.repo}: git update-ref {ref} failed: {' '.join(err.split())}")

    # -- the Backend interface -------------------------------------------------------------------

    def read(self, shard: str) -> Lease | None:
        self._fetch()
        oid = self._oid(shard)
        return self._load(oid) if oid else None

    def acquire(self, shard: str, holder: str, trace_id: str, ttl: float, now: float) -> Lease:
        for _ in range(self.attempts):
            self._fetch()
            old = self._oid(shard)
            current = self._load(old) if old else None
            if current is not None and current.holder != holder and current.live(now):
                raise held_error(shard, current)
            previous = None
            if current is not None and not current.released and current.holder != holder:
                previous = {"holder": current.holder, "trace_id": current.trace_id, "token": current.token}
            lease = Lease(
                shard,
                holder,
                trace_id,
                (current.token if current else 0) + 1,
                now,
                now + ttl,
                previous=previous,
            )
            try:
                self._swap(shard, lease, old)
            except _Lost:
                continue
            return lease
        raise LockHeldError(f"shard {shard}: could not take the lease (too much contention)")

    def renew(self, lease: Lease, ttl: float, now: float) -> Lease:
        for _ in range(self.attempts):
            self._fetch()
            old = self._oid(lease.shard)
            current = self._load(old) if old else None
            if current is None or current.token != lease.token or current.holder != lease.holder or current.released:
                raise FencedError(
                    f"shard {lease.shard}: our lease (token {lease.token}) was taken over"
                    + (f" by {current.holder} (token {current.token})" if current else "")
                )
            renewed = Lease(lease.shard, lease.holder, lease.trace_id, lease.token, lease.acquired, now + ttl)
            try:
                self._swap(lease.shard, renewed, old)
            except _Lost:
                continue
            return renewed
        raise FencedError(f"shard {lease.shard}: could not renew the lease (too much contention)")

    def release(self, lease: Lease, now: float) -> None:
        for _ in range(self.attempts):
            self._fetch()
            old = self._oid(lease.shard)
            current = self._load(old) if old else None
            if current is None or current.token != lease.token or current.holder != lease.holder:
                return  # someone took it over: nothing of ours to release
            released = Lease(lease.shard, lease.holder, lease.trace_id, lease.token, lease.acquired, now, released=True)
            try:
                self._swap(lease.shard, released, old)
            except _Lost:
                continue
            return

    def barrier(self) -> Barrier:
        self._fetch()
        oid = self._oid(BARRIER_REF)
        if oid is None:
            return Barrier()
        try:
            return Barrier(**self._body(oid))
        except (ValueError, TypeError) as exc:
            raise RepoError(f"{self.repo}: {BARRIER_REF} ({oid}) is not a barrier ({exc})") from exc

    def advance_barrier(self, seen: Barrier, g: int, phase: str, by: str, now: float) -> Barrier:
        check_advance(seen, g, phase)
        self._fetch()
        old = self._oid(BARRIER_REF)
        current = Barrier(**self._body(old)) if old else Barrier()
        if current.version != seen.version:
            raise BarrierMoved(f"the barrier moved to (g={current.g}, {current.phase}) meanwhile (by {current.by})")
        new = Barrier(g, phase, seen.version + 1, now, by)
        try:
            self._swap(BARRIER_REF, new, old)
        except _Lost:
            raise BarrierMoved("the barrier moved meanwhile") from None
        return new
