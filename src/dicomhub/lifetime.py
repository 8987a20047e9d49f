"""Processes that end with the one that started them.

A child process whose parent is killed (SIGKILL, the OOM killer) is adopted by PID 1 and lives
on: a server process would serve alone on the shared port, a conversion worker would idle
forever. On Linux the kernel can signal a child when its parent ends (PR_SET_PDEATHSIG);
elsewhere the clean shutdown paths are all there is.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def end_with_parent(parent: int) -> None:
    """Ask for SIGTERM when the parent process ``parent`` ends; exit now if it already has."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)  # the parent died before the call
