"""A coordination backend in this process's memory: leases, tokens and the barrier with the same
rules as the git and etcd backends, for one process only — tests of the recovery core, and the
simulator's virtual runs. Thread-safe; nothing survives the process."""

from __future__ import annotations

import threading
from dataclasses import replace

from ..errors import BarrierMoved, FencedError
from .base import Barrier, Lease, check_advance, held_error


class MemoryBackend:
    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._barrier = Barrier()
        self._lock = threading.Lock()

    def read(self, shard: str) -> Lease | None:
        with self._lock:
            return self._leases.get(shard)

    def acquire(self, shard: str, holder: str, trace_id: str, ttl: float, now: float) -> Lease:
        with self._lock:
            current = self._leases.get(shard)
            if current is not None and current.holder != holder and current.live(now):
                raise held_error(shard, current)
            previous = None
            if current is not None and not current.released and current.holder != holder:
                previous = {"holder": current.holder, "trace_id": current.trace_id, "token": current.token}
            token = (current.token if current else 0) + 1
            lease = Lease(shard, holder, trace_id, token, now, now + ttl, previous=previous)
            self._leases[shard] = lease
            return lease

    def renew(self, lease: Lease, ttl: float, now: float) -> Lease:
        with self._lock:
            current = self._leases.get(lease.shard)
            if current is None or current.token != lease.token or current.holder != lease.holder or current.released:
                raise FencedError(
                    f"shard {lease.shard}: our lease (token {lease.token}) was taken over"
                    + (f" by {current.holder} (token {current.token})" if current else "")
                )
            renewed = Lease(lease.shard, lease.holder, lease.trace_id, lease.token, lease.acquired, now + ttl)
            self._leases[lease.shard] = renewed
            return renewed

    def release(self, lease: Lease, now: float) -> None:
        with self._lock:
            current = self._leases.get(lease.shard)
            if current is None or current.token != lease.token or current.holder != lease.holder:
                return  # someone took it over: nothing of ours to release
            self._leases[lease.shard] = replace(current, expires=now, released=True, previous=None)

    def barrier(self) -> Barrier:
        with self._lock:
            return self._barrier

    def advance_barrier(self, seen: Barrier, g: int, phase: str, by: str, now: float) -> Barrier:
        check_advance(seen, g, phase)
        with self._lock:
            if self._barrier.version != seen.version:
                current = self._barrier
                raise BarrierMoved(f"the barrier moved to (g={current.g}, {current.phase}) meanwhile (by {current.by})")
            self._barrier = Barrier(g, phase, seen.version + 1, now, by)
            return self._barrier
