"""Processes that end with the one that started them.

A child process whose parent is killed (SIGKILL, the OOM killer) is adopted by another process
and lives on: a server process would serve alone on the shared port, a conversion worker would
idle forever. Each such child watches its parent and ends itself once the parent is gone.
(Linux's PR_SET_PDEATHSIG is not enough: it fires when the parent *thread* that started the
child ends, and a pool's workers may be started by a short-lived thread.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

WATCH_INTERVAL = 0.5  # seconds between looks at the parent


def end_with_parent(parent: int) -> None:
    """SIGTERM to this process (its graceful shutdown, or the default: exit) once the process
    ``parent`` is no longer its parent; at once if it already is not."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
