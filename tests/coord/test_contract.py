"""One contract for every coordination backend: git (a real repository), etcd (a real 3-member
cluster on loopback) and the in-memory one. Leases with strictly increasing fencing tokens per
shard, takeover of an expired lease, renewal, exactly one winner under contention, and a barrier
that is a compare-and-swap that never goes back."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from haios.coord import Barrier, GitBackend
from haios.coord.base import Backend
from haios.coord.etcd import EtcdBackend
from haios.coord.memory import MemoryBackend
from haios.errors import BarrierError, BarrierMoved, FencedError, LockHeldError

T0 = 1_800_000_000.0
Opener = Callable[[], Backend]  # another handle on the same store (another reconciler)


@pytest.fixture(params=["git", pytest.param("etcd", marks=pytest.mark.service), "memory"])
def opener(request: pytest.FixtureRequest, repo: Path) -> Opener:
    if request.param == "git":
        return lambda: GitBackend(repo)
    if request.param == "etcd":
        endpoints = request.getfixturevalue("etcd").endpoints
        name = f"contract-{uuid.uuid4().hex[:8]}"
        return lambda: EtcdBackend(endpoints, cluster=name)
    shared = MemoryBackend()
    return lambda: shared


def test_tokens_strictly_increase_per_shard(opener: Opener) -> None:
    backend = opener()
    assert backend.read("CONSTRUCT") is None
    tokens = []
    for i in range(3):
        lease = backend.acquire("CONSTRUCT", f"h{i}", f"t{i}", 60, T0 + i)
        tokens.append(lease.token)
        backend.release(lease, T0 + i)
    assert tokens == sorted(set(tokens)) and len(tokens) == 3
    assert backend.read("CONSTRUCT") is not None and backend.read("CONSTRUCT").released  # type: ignore[union-attr]
    other = backend.acquire("VALIDATE", "h", "t", 60, T0)
    assert other.token >= 1  # each shard counts on its own


def test_a_live_lease_is_held_and_names_its_holder(opener: Opener) -> None:
    opener().acquire("IDLE", "other-host/1/2/abc", "trace-a", 60, T0)
    with pytest.raises(LockHeldError, match="held by pid 1 on host other-host for trace trace-a") as info:
        opener().acquire("IDLE", "me", "trace-b", 60, T0 + 1)
    assert info.value.exit_code == 4


def test_an_expired_lease_is_taken_over_with_a_higher_token(opener: Opener) -> None:
    first = opener().acquire("ANALYZE", "other-host/1/2/abc", "trace-a", 60, T0)
    backend = opener()
    second = backend.acquire("ANALYZE", "me", "trace-a", 60, T0 + 61)
    assert second.token > first.token
    assert second.previous == {"holder": "other-host/1/2/abc", "trace_id": "trace-a", "token": first.token}
    with pytest.raises(FencedError, match="taken over"):
        opener().renew(first, 60, T0 + 62)
    opener().release(first, T0 + 62)  # not the holder's any more: changes nothing
    assert backend.read("ANALYZE") == second


def test_renew_extends_and_keeps_others_out(opener: Opener) -> None:
    backend = opener()
    lease = backend.acquire("IDLE", "me", "t", 60, T0)
    renewed = backend.renew(lease, 60, T0 + 50)
    assert (renewed.token, renewed.expires) == (lease.token, T0 + 110)
    with pytest.raises(LockHeldError):
        opener().acquire("IDLE", "you", "t2", 60, T0 + 100)
    assert opener().acquire("IDLE", "you", "t2", 60, T0 + 111).token > lease.token


def test_exactly_one_of_eight_racing_reconcilers_wins(opener: Opener) -> None:
    winners: list[tuple[int, int]] = []  # (contender, token)
    losers: list[str] = []
    start = threading.Barrier(8)

    def contend(i: int) -> None:
        backend = opener()
        start.wait()
        try:
            winners.append((i, backend.acquire("CONSTRUCT", f"h{i}", f"t{i}", 60, T0).token))
        except LockHeldError as exc:
            losers.append(exc.message)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(winners) == 1 and len(losers) == 7
    assert all("shard CONSTRUCT is held by" in m for m in losers)
    (winner, token), lease = winners[0], opener().read("CONSTRUCT")
    assert lease is not None and (lease.holder, lease.token) == (f"h{winner}", token)  # the winner's is stored


def test_the_barrier_is_a_compare_and_swap_that_never_goes_back(opener: Opener) -> None:
    backend, rival = opener(), opener()
    assert backend.barrier() == Barrier()
    seen = backend.barrier()
    first = backend.advance_barrier(seen, 1, "ANALYZE", "a", T0)
    assert (first.g, first.phase) == (1, "ANALYZE") and first.version > seen.version
    assert rival.barrier() == first
    with pytest.raises(BarrierMoved):
        rival.advance_barrier(seen, 1, "BLUEPRINT", "b", T0 + 1)  # read before 'a' published
    with pytest.raises(BarrierError):
        backend.advance_barrier(first, 0, "IDLE", "a", T0 + 2)
    second = rival.advance_barrier(rival.barrier(), 2, "ANALYZE", "b", T0 + 3)
    assert second.version > first.version and backend.barrier() == second
