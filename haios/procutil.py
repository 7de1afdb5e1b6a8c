"""Process lifetime: helper processes never outlive the haios process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` (its parent) ends, however it ends —
    SIGKILL included; exits at once when the parent is already gone. Linux only; elsewhere this is
    a no-op and a helper ends when it next finds its pipe closed."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the signal was armed
        os._exit(1)


def worker_initializer(parent: int) -> None:
    """For pool workers: Ctrl-C is the parent's to handle (it ends the workers), and they die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
