"""Processes that end with the one that started them.

A child process whose parent is killed (SIGKILL, the OOM killer) is adopted by another process
and lives on: a server process would serve alone on the shared port, a conversion worker would
idle forever. Each such child watches its parent and ends itself once the parent is gone.
(Linux's PR_SET_PDEATHSIG is not enough: it fires when the parent *thread* that started the
child ends, and a pool's workers may be started by a short-lived thread.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
WATCH_INTERVAL = 0.5  # seconds between looks at the parent
RESTART_DELAY = 2.0  # seconds before a child that ended by itself is started again


def end_with_parent(parent: int) -> None:
    """SIGTERM to this process (its graceful shutdown, or the default: exit) once the process
    ``parent`` is no longer its parent; at once if it already is not."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


# CPU priorities of serve's background process (--background-priority)
PRIORITIES = ("idle", "low", "normal")
LOW_NICE = 10


def lower_priority(priority: str) -> None:
    """This process at a lower CPU priority, every thread of it (on Linux a thread has its own,
    and a library may have started threads at import; threads started later inherit it).
    "idle": Linux's SCHED_IDLE, the CPU the other processes leave, given up at once when one of
    them wakes (nice 19 where there is none); "low": nice 10; "normal": unchanged."""
    if priority == "normal":
        return
    idle = priority == "idle" and hasattr(os, "SCHED_IDLE")
    nice = 19 if priority == "idle" else LOW_NICE
    tasks = Path("/proc/self/task")
    for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, now + nice))


class Child:
    """A process ``serve`` runs beside its server processes (``dicomhub dimse``, ``dicomhub
    worker``), started again ``RESTART_DELAY`` seconds after it ends by itself (a crash, the
    OOM killer) until ``stop``. The child ends itself when ``serve`` is killed
    (``end_with_parent``, called by the child)."""

    def __init__(self, command: list[str]):
        self._command = command
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.process = subprocess.Popen(command)
        threading.Thread(target=self._watch, name="child-" + command[-1], daemon=True).start()

    def _watch(self) -> None:
        while True:
            code = self.process.wait()
            if self._stopping.wait(RESTART_DELAY):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                log.error("%s ended (exit code %s); starting it again", self._command[-1], code)
                self.process = subprocess.Popen(self._command)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (its graceful shutdown), SIGKILL after ``timeout`` seconds."""
        with self._lock:
            self._stopping.set()
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
