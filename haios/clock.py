"""The wall clock as a default ``clock=`` argument.

``clock: Callable[[], float] = time.time`` binds the function object once, when the module is
imported; ``wall_time`` looks ``time.time`` up on every call, so a process that replaces it (a test
running as if later, a simulator) is heard by every component alike.
"""

from __future__ import annotations

import time


def wall_time() -> float:
    return time.time()
