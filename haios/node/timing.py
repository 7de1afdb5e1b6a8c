"""Where a node operation's time goes, for ``phase_recovery_latency_seconds{step}`` (SPEC §9).

A recovery operation (:func:`haios.node.recover.dispatch`) runs inside :func:`collecting`; the few
places that matter measure themselves with :func:`measure`: durable WAL appends (``wal_fsync``, or
``checkpoint_flush`` for the RECOVERY checkpoints), working out the next vector clock (``vc_merge``)
and restoring ``data/`` from a snapshot (``snapshot_apply``). Outside :func:`collecting` a
measurement costs one context-variable lookup and records nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter

STEPS = ("wal_fsync", "checkpoint_flush", "sel_compensate", "vc_merge", "snapshot_apply")
_current: ContextVar[dict[str, float] | None] = ContextVar("haios_timings", default=None)


@contextmanager
def collecting() -> Iterator[dict[str, float]]:
    """Seconds per step of everything measured inside the block (the dict fills as it runs)."""
    found: dict[str, float] = {}
    token = _current.set(found)
    try:
        yield found
    finally:
        _current.reset(token)


@contextmanager
def measure(step: str) -> Iterator[None]:
    """Add the block's wall time to ``step`` when someone is collecting."""
    found = _current.get()
    if found is None:
        yield
        return
    started = perf_counter()
    try:
        yield
    finally:
        found[step] = found.get(step, 0.0) + (perf_counter() - started)
