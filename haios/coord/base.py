"""Recovery locks and fencing tokens (SPEC §4.6, §6.2): the interface every backend implements.

A lock is a **lease** on one shard (a phase): who holds it, for which trace, the fencing token it
granted, when it was acquired and when it expires. Tokens are strictly increasing per shard — every
acquisition, takeovers included, gets the previous token + 1 — so a node that accepted token 7 refuses
every command carrying 6. A lease whose holder is gone (past its expiry, or a process on this host
that no longer exists) is taken over, and the new holder resumes the trace the lease names.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ..config.model import PHASES, phase_order
from ..errors import BarrierError, LockHeldError
from ..timefmt import utc


@dataclass(frozen=True)
class Lease:
    shard: str
    holder: str
    trace_id: str
    token: int
    acquired: float
    expires: float
    released: bool = False
    previous: dict[str, Any] | None = None  # the lease this one took over, if any

    def live(self, now: float) -> bool:
        return not self.released and self.expires > now and holder_alive(self.holder) is not False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Barrier:
    """The cluster-wide barrier: the last transition committed on every active member, and the
    iteration counter ``g`` with it (SPEC §6.2). ``version`` changes with every update (git: a
    count; etcd: the key's mod revision), which is what a compare-and-swap compares."""

    g: int = 0
    phase: str | None = None
    version: int = 0
    updated: float = 0.0
    by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_advance(seen: Barrier, g: int, phase: str) -> None:
    """Refuse a barrier update that would move it backwards or to an unknown phase."""
    if phase not in PHASES:
        raise BarrierError(f"barrier: unknown phase {phase!r}")
    if phase_order(g, phase) < phase_order(seen.g, seen.phase):
        raise BarrierError(f"barrier: (g={g}, {phase}) is before the published (g={seen.g}, {seen.phase})")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (with the pid, a unique process identity)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def new_holder() -> str:
    """An identity for this reconciler: host, pid, process start time, and a random part."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_time(pid) or 0}/{uuid.uuid4().hex[:8]}"


def held_error(shard: str, current: Lease) -> LockHeldError:
    """The error for a shard another reconciler's live lease holds, in words."""
    return LockHeldError(
        f"shard {shard} is held by {holder_words(current.holder)} for trace {current.trace_id} "
        f"(token {current.token}, until {utc(current.expires)})",
        hint="another reconciler is working on it; run again after it finishes or its lease expires",
    )


def holder_words(holder: str) -> str:
    """A lease holder as a person reads it: ``pid 7832 on host build-1`` (a holder of another form,
    from another tool or version, as it is)."""
    parts = holder.split("/")
    if len(parts) == 4 and parts[1].isdigit():
        return f"pid {parts[1]} on host {parts[0]}"
    return holder


def holder_alive(holder: str) -> bool | None:
    """Whether the holder's process still runs: known only for holders on this host (None otherwise)."""
    parts = holder.split("/")
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return None
    try:
        pid = int(parts[1])
    except ValueError:
        return None
    return _start_time(pid) == parts[2]


class Backend(Protocol):
    """Where leases and tokens live. Every update is a compare-and-swap."""

    def read(self, shard: str) -> Lease | None:
        """The current lease of ``shard`` (released or expired ones too), or None if never taken."""
        ...

    def acquire(self, shard: str, holder: str, trace_id: str, ttl: float, now: float) -> Lease:
        """Take the shard's lease with the next token; LockHeldError (exit 4) if someone else holds it."""
        ...

    def renew(self, lease: Lease, ttl: float, now: float) -> Lease:
        """Extend a lease we hold; FencedError (exit 4) if it was taken over meanwhile."""
        ...

    def release(self, lease: Lease, now: float) -> None:
        """Give the lease up (its token stays, so the next one is higher)."""
        ...

    def barrier(self) -> Barrier:
        """The cluster's barrier as last published (``g`` 0, no phase, version 0 before the first)."""
        ...

    def advance_barrier(self, seen: Barrier, g: int, phase: str, by: str, now: float) -> Barrier:
        """Move the barrier from ``seen`` to (g, phase) if nobody changed it meanwhile (BarrierMoved,
        exit 4, otherwise); it never moves backwards (BarrierError)."""
        ...
