"""What only the git lease backend does, against real git repositories (a bare one as the remote):
every update a commit in the shard's history, a remote updated by an atomic push with lease. The
rest of the contract every backend keeps is tests/coord/test_contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import subprocs

from haios.coord import GitBackend, Lease, holder_alive, new_holder
from haios.coord.git import REF_PREFIX, _Lost
from haios.errors import LockHeldError

T0 = 1_800_000_000.0


def test_git_lease_tokens_strictly_increase(repo: Path) -> None:
    backend = GitBackend(repo)
    assert backend.read("CONSTRUCT") is None
    tokens = []
    for i in range(3):
        lease = backend.acquire("CONSTRUCT", f"h{i}", f"t{i}", 60, T0 + i)
        tokens.append(lease.token)
        backend.release(lease, T0 + i)
    assert tokens == [1, 2, 3]
    assert backend.acquire("VALIDATE", "h", "t", 60, T0).token == 1  # per shard
    history = subprocs.run(
        ["git", "log", "--format=%s", REF_PREFIX + "CONSTRUCT"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(history) == 6  # every acquire and release is a commit in the shard's history


def test_git_lease_of_a_dead_local_process_is_taken_over_at_once(repo: Path) -> None:
    proc = subprocs.spawn(["true"])
    proc.wait()
    import socket

    dead = f"{socket.gethostname()}/{proc.pid}/1/deadbeef"
    assert holder_alive(dead) is False
    assert holder_alive(new_holder()) is True
    assert holder_alive("elsewhere/1/2/3") is None
    backend = GitBackend(repo)
    backend.acquire("BLUEPRINT", dead, "trace-a", 3600, T0)
    assert backend.acquire("BLUEPRINT", new_holder(), "trace-a", 60, T0 + 1).token == 2


def test_git_lease_on_a_remote_is_an_atomic_push_with_lease(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    subprocs.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocs.run(["git", "remote", "add", "origin", str(remote)], cwd=repo, check=True)
    clone = tmp_path / "clone"
    subprocs.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    here, there = GitBackend(repo, remote="origin"), GitBackend(clone, remote="origin")
    lease = here.acquire("VALIDATE", "here", "t1", 60, T0)
    with pytest.raises(LockHeldError, match="held by here"):
        there.acquire("VALIDATE", "there", "t2", 60, T0 + 1)  # sees the remote's lease, not a local one
    here.release(lease, T0 + 2)
    taken = there.acquire("VALIDATE", "there", "t2", 60, T0 + 3)
    assert taken.token == 2
    with pytest.raises(LockHeldError, match="held by there"):
        here.acquire("VALIDATE", "here", "t3", 60, T0 + 4)
    # the swap itself is a compare-and-swap on the remote: a push based on a stale value is refused
    with pytest.raises(_Lost):
        here._swap("VALIDATE", Lease("VALIDATE", "here", "t3", 3, T0, T0 + 60), None)
    assert here.read("VALIDATE") == taken


def test_git_barrier_is_a_compare_and_swap_that_never_goes_back(repo: Path) -> None:
    from haios.coord import Barrier
    from haios.errors import BarrierError, BarrierMoved

    backend, rival = GitBackend(repo), GitBackend(repo)
    assert backend.barrier() == Barrier()
    seen = backend.barrier()
    first = backend.advance_barrier(seen, 1, "ANALYZE", "a", T0)
    assert (first.g, first.phase, first.version) == (1, "ANALYZE", 1)
    assert rival.barrier() == first
    with pytest.raises(BarrierMoved):
        rival.advance_barrier(seen, 1, "BLUEPRINT", "b", T0 + 1)  # read before 'a' published
    with pytest.raises(BarrierError):
        backend.advance_barrier(first, 0, "IDLE", "a", T0 + 2)
    second = rival.advance_barrier(rival.barrier(), 2, "ANALYZE", "b", T0 + 3)
    assert second.version == 2 and backend.barrier() == second
    log = subprocs.run(
        ["git", "log", "--format=%s", "refs/haios/barrier"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert len(log.splitlines()) == 2  # the barrier's history, as for the leases
