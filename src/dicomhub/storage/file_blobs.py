"""BlobStore on a local folder. A put never replaces an existing object: bytes are written to a
new file under their key (keys come from versions, never reused, and are read only once the
index commits them), a spooled file is hard-linked in.

Durability: a new file is synced, and its folder too, unless the folder is on a file system
whose fsync of a newly created file also makes its folder entry durable (ext4, XFS, Btrfs:
their journals, or ext4's sync of a new entry's parent without one, commit the create with
the file), where a second sync would only cost another flush per instance. A hard link is not
a create of the file it links, so its folder is always synced. A file's own sync is a data sync
(``fdatasync``, as SQLite's and PostgreSQL's): it writes the file's bytes and what finding them
needs (its size, its blocks and, for a new file, the journal's record of its create), not its
times, and costs less than a full one."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from dicomhub.errors import NotFound, Unavailable, storage_error
from dicomhub.storage.disk import check_space

PARTIALS = ".partial"  # copies being made from another file system (cleared at start-up)
PARTIAL_AGE = 3600  # seconds after which a copy there is a crash's leftover
_datasync = getattr(os, "fdatasync", os.fsync)  # not on macOS


class FileBlobStore:
    def __init__(self, root: Path, fsync: bool = True):
        """``fsync``: each object (and its folder entry) reaches the disk before ``put``
        returns; off, the operating system writes it back later (a power cut can lose it)."""
        self.root = root
        self.fsync = fsync
        self.sync_new_entries = fsync  # known once the folder exists (start)

    def _path(self, key: str) -> Path:
        return self.root / key

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_clear_partials, self.root / PARTIALS)
        if self.fsync:
            kind = await asyncio.to_thread(file_system, self.root)
            self.sync_new_entries = kind not in ENTRY_SYNCED_WITH_FILE

    async def put(self, key: str, body: bytes | Path) -> None:
        target = self._path(key)

        def write() -> None:
            if isinstance(body, Path):
                _link(body, target, self.fsync, self.root / PARTIALS)
                if self.fsync:
                    _fsync_dir(target.parent)
                return
            _create(target, body, self.fsync)
            if self.sync_new_entries:
                _fsync_dir(target.parent)

        try:
            await asyncio.to_thread(write)
        except FileExistsError as exc:
            raise Unavailable("blob store", f"object {key} already exists in {self.root}") from exc
        except OSError as exc:
            raise storage_error("blob store", exc) from exc

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        def read() -> bytes:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)

        return await self._io(key, read)

    async def stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        def first() -> tuple:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed below
            try:
                end = os.fstat(f.fileno()).st_size
                if length is not None:
                    end = min(end, offset + length)
                f.seek(offset)
                return f, end, f.read(min(chunk_size, max(0, end - offset)))
            except BaseException:
                f.close()
                raise

        # Opening, sizing and the first read are one hop to a thread: a file smaller than a
        # chunk (most instances) costs one.
        f, end, chunk = await self._io(key, first)
        try:
            position = offset + len(chunk)
            while chunk:
                yield chunk
                if position >= end:
                    break
                chunk = await asyncio.to_thread(f.read, min(chunk_size, end - position))
                position += len(chunk)
        finally:
            f.close()

    async def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def read_many(self, keys: Sequence[str]) -> list[bytes]:
        if not keys:
            return []

        def read() -> list[bytes]:
            out = []
            for key in keys:
                with self._open(key) as f:
                    out.append(f.readall())
            return out

        return await self._io(keys[0], read)

    async def open_local(self, keys: Sequence[str]) -> list[BinaryIO] | None:
        if not keys:
            return []

        def open_all() -> list[BinaryIO]:
            files: list[BinaryIO] = []
            try:
                for key in keys:
                    files.append(self._open(key))
                    _read_ahead(files[-1].fileno())
            except BaseException:
                for f in files:
                    f.close()
                raise
            return files

        return await self._io(keys[0], open_all)

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb", buffering=0)  # noqa: SIM115 - the caller closes it
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing") from exc

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        except OSError as exc:
            raise Unavailable("blob store", str(exc)) from exc

    async def check(self) -> None:
        ok = await asyncio.to_thread(lambda: self.root.is_dir() and os.access(self.root, os.W_OK))
        if not ok:
            raise Unavailable("blob store", f"{self.root} is not a writable folder")
        await asyncio.to_thread(check_space, "blob store", self.root)

    async def close(self) -> None:
        return None

    async def _io(self, key: str, fn):
        try:
            return await asyncio.to_thread(fn)
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing") from exc
        except OSError as exc:
            raise Unavailable("blob store", str(exc)) from exc


def _create(target: Path, data: bytes, fsync: bool) -> None:
    """Write a new object in place: its key is never reused and no reader looks for it until the
    index commits it, so a half-written file (a crash) is only garbage for the cleanup job."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o644)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            _datasync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)


def _clear_partials(folder: Path) -> None:
    """Remove the copies a crash left behind: those not written to for an hour (another
    process on this store may be making one now)."""
    if not folder.is_dir():
        return
    stale = time.time() - PARTIAL_AGE
    for copy in folder.iterdir():
        with contextlib.suppress(OSError):
            if copy.stat().st_mtime < stale:
                copy.unlink()


def _link(path: Path, target: Path, fsync: bool, partials: Path) -> None:
    """Move a spooled file in: a hard link is atomic and never replaces an existing object.
    From another file system, a copy in ``partials`` (on the store's own) is linked in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fsync:
        with open(path, "rb+") as f:
            _datasync(f.fileno())
    try:
        os.link(path, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partials.mkdir(exist_ok=True)
        partial = partials / uuid.uuid4().hex
        shutil.copyfile(path, partial)
        try:
            if fsync:
                with open(partial, "rb+") as f:
                    _datasync(f.fileno())
            os.link(partial, target)
        finally:
            os.unlink(partial)
    os.unlink(path)


def _read_ahead(fd: int) -> None:
    """Have the file read into the page cache, unless its first page is there already (the
    common case, and a test much cheaper than the advice): it will be sent whole, by the kernel,
    from the event loop's thread, which must not wait for the disk."""
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        return
    except BlockingIOError:
        pass  # not cached
    except (AttributeError, OSError):
        pass  # no RWF_NOWAIT here (not Linux, or not this file system)
    if hasattr(os, "posix_fadvise"):  # not on macOS
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)


# File systems whose fsync of a newly created file also makes its folder entry durable.
ENTRY_SYNCED_WITH_FILE = frozenset({"ext4", "xfs", "btrfs"})


def file_system(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the file system ``path`` is on (Linux: the mount that holds it in
    /proc/self/mountinfo); None where that cannot be told."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    where = os.path.realpath(path)
    best, kind = "", None
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        fields = fields.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        mount = _unescape(fields[4])
        inside = where == mount or where.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):  # the longest, and the last mounted of equals
            best, kind = mount, rest.split()[0]
    return kind


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
