"""The wall clock: as a default ``clock=`` argument, and shifted to start at a given time.

``clock: Callable[[], float] = time.time`` binds the function object once, when the module is
imported; ``wall_time`` looks ``time.time`` up on every call, so a process that replaces it (a test
running as if later, a simulator) is heard by every component alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wall_time() -> float:
    return time.time()


def wall_clock(now: float | None) -> Callable[[], float]:
    """The wall clock, shifted to read ``now`` at this moment (not shifted: None)."""
    started = time.time()
    base = started if now is None else now

    def clock() -> float:
        return base + (time.time() - started)

    return clock
