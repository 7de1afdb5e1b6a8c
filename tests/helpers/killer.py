"""Run ``haios ARGS`` and SIGKILL it at a chosen point of its recovery work.

    python killer.py after-checkpoint N haios-args...     # dies right after the N-th RECOVERY checkpoint
    python killer.py before-compensated N haios-args...   # dies after the N-th compensator succeeded,
                                                          # before the node recorded it (COMPENSATED)

The node operations look ``checkpoint`` and ``compensated`` up in their module at call time, so
wrapping them here is enough; everything else is the real command.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import haios.node.recover as recover
from haios.cli import main

point, limit, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
counts = {"after-checkpoint": 0, "before-compensated": 0}
real_checkpoint, real_compensated = recover.checkpoint, recover.compensated


def checkpoint(*a: Any, **k: Any) -> dict[str, Any]:
    result = real_checkpoint(*a, **k)
    counts["after-checkpoint"] += 1
    if point == "after-checkpoint" and counts[point] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


def compensated(*a: Any, **k: Any) -> dict[str, Any]:
    counts["before-compensated"] += 1
    if point == "before-compensated" and counts[point] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_compensated(*a, **k)


recover.checkpoint = checkpoint  # type: ignore[assignment]
recover.compensated = compensated  # type: ignore[assignment]
sys.argv = ["haios", *args]
main()
