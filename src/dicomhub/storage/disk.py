"""Free space on a local file system, as the health check reports it."""

from __future__ import annotations

import os
from pathlib import Path

from dicomhub.errors import InsufficientStorage

# Below this much free space (or with no free inode), a store of a typical instance fails: the
# health check reports the blob store or index degraded, naming the space left.
LOW_SPACE = 1024 * 1024


def check_space(what: str, folder: Path) -> None:
    """Raise InsufficientStorage when ``folder``'s file system has (almost) no space left."""
    found = os.statvfs(folder)
    free = found.f_bavail * found.f_frsize
    if free < LOW_SPACE or (found.f_files and not found.f_favail):
        raise InsufficientStorage(
            what, f"{free} bytes and {found.f_favail} inodes free where {folder} is"
        )
