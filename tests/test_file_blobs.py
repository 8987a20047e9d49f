"""The local-folder blob store's durability: which syncs a put makes, decided by the file system
its folder is on (read from the real mount table), for new files and for spooled ones."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from dicomhub.storage import file_blobs
from dicomhub.storage.file_blobs import (
    ENTRY_SYNCED_WITH_FILE,
    PARTIALS,
    FileBlobStore,
    file_system,
)

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:33 / /data rw,relatime shared:7 - xfs /dev/vdb rw
41 40 0:34 / /data/with\040space rw,relatime - tmpfs tmpfs rw
42 40 0:35 / /data/with rw,relatime - btrfs /dev/vdc rw
43 27 0:36 / /mnt/nfs rw,relatime master:3 - nfs4 server:/export rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/", "ext4"),
        ("/srv/dicom", "ext4"),
        ("/data", "xfs"),
        ("/data/blobs", "xfs"),
        ("/data/with space/blobs", "tmpfs"),  # an escaped mount point
        ("/data/with/blobs", "btrfs"),  # not /data/with space: a whole component must match
        ("/data/within", "xfs"),
        ("/mnt/nfs/a", "nfs4"),  # optional fields before the separator
    ],
)
def test_the_file_system_is_the_longest_mount_holding_the_path(path, kind):
    assert file_system(Path(path), MOUNTINFO) == kind


def test_the_real_mount_table_agrees_with_findmnt(tmp_path):
    found = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--target", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        pytest.skip(f"findmnt could not tell: {found.stderr.strip()}")
    assert file_system(tmp_path) == found.stdout.strip()
    assert file_system(Path("/proc/self")) == "proc"


def _synced_paths(monkeypatch) -> list[str]:
    """The paths synced, by fsync (folders) or a data sync (files); the real syscalls still
    run."""
    synced: list[str] = []

    def recording(real):
        def sync(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        return sync

    monkeypatch.setattr(os, "fsync", recording(os.fsync))
    monkeypatch.setattr(file_blobs, "_datasync", recording(file_blobs._datasync))
    return synced


def _store(root: Path) -> FileBlobStore:
    store = FileBlobStore(root)
    asyncio.run(store.start())
    return store


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_a_new_file_syncs_its_folder_only_where_its_own_sync_does_not(tmp_path, monkeypatch, where):
    """On ext4, XFS and Btrfs the file's fsync commits its folder entry: one sync per put.
    Elsewhere (here tmpfs, /dev/shm) the folder is synced too."""
    if where == "shm":
        if file_system(Path("/dev/shm")) != "tmpfs":
            pytest.skip("/dev/shm is not a tmpfs here")
        root = Path("/dev/shm") / f"dicomhub-test-{os.getpid()}-{tmp_path.name}"
    else:
        root = tmp_path / "blobs"
        if file_system(tmp_path) not in ENTRY_SYNCED_WITH_FILE:
            pytest.skip(f"{tmp_path} is on {file_system(tmp_path)}, not ext4, XFS or Btrfs")
    try:
        store = _store(root)
        synced = _synced_paths(monkeypatch)
        asyncio.run(store.put("ab/c_1.dcm", b"DICM" * 100))
        target = str(root / "ab" / "c_1.dcm")
        assert (root / "ab" / "c_1.dcm").read_bytes() == b"DICM" * 100
        if where == "shm":
            assert store.sync_new_entries and synced == [target, str(root / "ab")]
        else:
            assert not store.sync_new_entries and synced == [target]
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_a_linked_spool_file_always_syncs_its_folder(tmp_path, monkeypatch):
    """A hard link adds an entry to an existing file: the file's earlier sync does not cover it."""
    store = _store(tmp_path / "blobs")
    spooled = tmp_path / "spooled"
    spooled.write_bytes(b"x" * 1000)
    synced = _synced_paths(monkeypatch)
    asyncio.run(store.put("cd/e_2.dcm", spooled))
    assert (tmp_path / "blobs" / "cd" / "e_2.dcm").read_bytes() == b"x" * 1000
    assert synced == [str(spooled), str(tmp_path / "blobs" / "cd")]


def test_without_fsync_nothing_is_synced(tmp_path, monkeypatch):
    store = FileBlobStore(tmp_path / "blobs", fsync=False)
    asyncio.run(store.start())
    synced = _synced_paths(monkeypatch)
    asyncio.run(store.put("ab/c_3.dcm", b"data"))
    assert synced == [] and not store.sync_new_entries


def test_a_spool_file_from_another_file_system_is_copied_in_and_no_copy_outlives_a_start(
    tmp_path,
):
    """A spooled file on another file system (/dev/shm, a tmpfs) cannot be linked: it is copied
    into the store's .partial folder, then linked in. A copy a crash left there (untouched for an
    hour) is removed at the next start; a recent one (another process copying) is kept."""
    if file_system(Path("/dev/shm")) == file_system(tmp_path):
        pytest.skip("/dev/shm is not another file system here")
    spooled = Path("/dev/shm") / f"dicomhub-test-{os.getpid()}-{tmp_path.name}"
    spooled.write_bytes(b"y" * 5000)
    store = _store(tmp_path / "blobs")
    left = tmp_path / "blobs" / PARTIALS / "0123abcd"  # as a crash mid-copy leaves it
    left.parent.mkdir()
    left.write_bytes(b"half")
    recent = left.with_name("4567cdef")
    recent.write_bytes(b"being copied")
    os.utime(left, (0, time.time() - 3601))
    asyncio.run(store.start())
    assert not left.exists() and recent.exists()
    recent.unlink()
    asyncio.run(store.put("fg/h_3.dcm", spooled))
    assert (tmp_path / "blobs" / "fg" / "h_3.dcm").read_bytes() == b"y" * 5000
    assert not spooled.exists() and list((tmp_path / "blobs" / PARTIALS).iterdir()) == []
