"""The load tool's processes end with it, even when it is killed with
SIGKILL, rather than run on orphaned.

Linux sends the signal when the thread that started the process ends, not
only the process: start them from the main thread (the redis-server is not
covered, as a fault scenario restarts it from a worker thread)."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def stop_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send `signum` to this process when its parent dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signum)
