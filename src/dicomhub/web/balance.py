"""Connections spread evenly over the processes of ``serve --workers N``.

The processes share one listening socket, and the one that wakes first accepts every connection
waiting (its event loop accepts until none is left): four clients that connect at once can all
land on one process while another idles, and a kept-alive connection stays where it landed, so
one core does the work of two. Each process publishes how many connections it holds in a small
table all of them map (a file in the supervisor's private folder). A process that holds more
than one connection over the least loaded one answers its next request with ``Connection:
close`` (HTTP/1.1 section 9.6: the client opens a new connection for its next request), and the
new connection is accepted by a process waiting for work, not by the busy one.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct

ENVIRONMENT = "DICOMHUB_CONNECTION_TABLE"  # the table's path, handed to the server processes
_SLOT = struct.Struct("qq")  # a process id (0: free), the connections it holds


def create(folder: str, processes: int) -> str:
    """The table for ``processes`` server processes (and as many replacements), in ``folder``
    (private to the supervisor's user); its path."""
    path = os.path.join(folder, "connections")
    with open(path, "wb") as f:
        f.write(bytes(2 * processes * _SLOT.size))
    return path


class Balance:
    """A server process's view of the table: its own slot and the others'."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._table = mmap.mmap(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_EX)  # one process claims a slot at a time
            try:
                self._offset = self._claim()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _claim(self) -> int | None:
        """A free slot, or the slot of a process that has died (a replaced worker)."""
        for offset in range(0, len(self._table), _SLOT.size):
            pid, _ = _SLOT.unpack_from(self._table, offset)
            if pid == 0 or not _alive(pid):
                _SLOT.pack_into(self._table, offset, os.getpid(), 0)
                return offset
        return None  # every slot taken: this process takes no part (it never sheds)

    def publish(self, connections: int) -> None:
        if self._offset is not None:
            _SLOT.pack_into(self._table, self._offset, os.getpid(), connections)

    def crowded(self, connections: int) -> bool:
        """Should a process holding ``connections`` shed one: does another live process hold
        at least two fewer?"""
        if connections < 2 or self._offset is None:
            return False
        for offset in range(0, len(self._table), _SLOT.size):
            if offset == self._offset:
                continue
            pid, held = _SLOT.unpack_from(self._table, offset)
            if pid and held < connections - 1:
                if _alive(pid):
                    return True
                with contextlib.suppress(struct.error):  # a dead process's slot is free
                    _SLOT.pack_into(self._table, offset, 0, 0)
        return False

    def close(self) -> None:
        if self._offset is not None:
            _SLOT.pack_into(self._table, self._offset, 0, 0)
            self._offset = None
        self._table.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
