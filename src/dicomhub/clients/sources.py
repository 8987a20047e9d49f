"""What ``dicomhub import`` sends: the files named on its command line, folders walked
recursively, the members of ZIP and tar files (read from the archive, never extracted to disk)
and the files a DICOMDIR references.

An instance is a PS3.10 file: 128-byte preamble, ``DICM``, then the File Meta Information
(PS3.10 section 7.1). Anything else is skipped and listed, except a file a DICOMDIR references,
which is sent as it is (the server says if it cannot read it). The DICOMDIR itself (Media
Storage Directory Storage) is never sent: it describes a file-set, it is not an instance.

Archives are told by their name (``.zip``; ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``,
``.tar.xz``...), not by sniffing every file of a large folder.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}


@dataclass(frozen=True)
class Item:
    """One file to send (or to skip once read)."""

    key: str  # its identity in the state file: what it is and the version of it seen
    name: str  # as the user is told: the path, or ARCHIVE!MEMBER
    size: int
    path: str  # the file, or the archive holding it
    member: str | None = None  # its name in the archive
    referenced: bool = False  # a DICOMDIR names it: sent even without preamble


def plan(paths: list[str]) -> list[Item]:
    """Every file to read, in order, each once (a file both walked and referenced by a
    DICOMDIR counts as referenced). Raises FileNotFoundError for a PATH that does not exist."""
    found: dict[str, Item] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(raw)
        files = _walk(path) if path.is_dir() else [path]
        for file in files:
            for item in _items(file):
                if item.key not in found or item.referenced:
                    found[item.key] = item
    return list(found.values())


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            yield Path(root, name)


def _items(path: Path) -> list[Item]:
    stat = path.stat()
    version = f"{stat.st_size}:{stat.st_mtime_ns}"
    absolute = os.path.abspath(path)  # no symlink resolved: one system call less per file
    lower = path.name.lower()
    try:
        members = _members(path, lower)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error):
        members = None  # read as a file: said to be not DICOM
    if members is None:
        item = Item(f"{absolute}|{version}", str(path), stat.st_size, absolute)
        if lower == "dicomdir":
            return [item, *_referenced(path)]
        return [item]
    return [
        Item(f"{absolute}|{version}!{name}", f"{path}!{name}", size, absolute, name)
        for name, size in members
    ]


def _members(path: Path, lower: str) -> list[tuple[str, int]] | None:
    """(name, size) of an archive's files; None for a file that is not an archive."""
    if lower.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return [(m.filename, m.file_size) for m in archive.infolist() if not m.is_dir()]
    if lower.endswith(TAR_SUFFIXES):
        with tarfile.open(path) as archive:  # lists the members: read once, not extracted
            return [(m.name, m.size) for m in archive.getmembers() if m.isfile()]
    return None


def _referenced(dicomdir: Path) -> list[Item]:
    """The files a DICOMDIR's records name (Referenced File ID, PS3.3 F.3), that exist."""
    import pydicom  # only when there is a DICOMDIR to read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(dicomdir, force=True)
        records = ds.get("DirectoryRecordSequence") or []
    except Exception:
        return []  # not a readable DICOMDIR: reading it as a file will say it is skipped
    out = []
    for record in records:
        parts = record.get("ReferencedFileID")
        if not parts:
            continue
        parts = [parts] if isinstance(parts, str) else list(parts)
        file = dicomdir.parent.joinpath(*parts)
        if file.is_file():
            out.append(replace(_items(file)[0], referenced=True))
    return out


def read(items: list[Item]) -> Iterator[tuple[Item, bytes | None, str | None]]:
    """(item, its bytes, None) for an instance; (item, None, why) for what is skipped. An
    archive is opened once for its run of items, a tar read as a stream."""
    i = 0
    while i < len(items):
        item = items[i]
        if item.member is None:
            yield _checked(item, _read_file(item.path))
            i += 1
            continue
        run = [item]
        while i + len(run) < len(items) and items[i + len(run)].path == item.path:
            run.append(items[i + len(run)])
        done = set()
        try:
            for answer in _read_archive(run):
                done.add(answer[0].key)
                yield answer
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as exc:
            why = f"unreadable archive: {exc}"
            yield from ((other, None, why) for other in run if other.key not in done)
        i += len(run)


def _read_file(path: str) -> bytes | None:
    """The file's bytes; only its first 132 bytes when it is not a PS3.10 file."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            if head[128:132] != b"DICM":
                return head
            return head + f.read()
    except OSError:
        return None


def _read_archive(run: list[Item]) -> Iterator[tuple[Item, bytes | None, str | None]]:
    wanted = {item.member: item for item in run}
    path = run[0].path
    if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for item in run:
                yield _checked(item, archive.read(item.member))
        return
    with tarfile.open(path, "r|*") as archive:  # a stream: members in archive order
        for member in archive:
            item = wanted.pop(member.name, None)
            if item is not None and member.isfile():
                f = archive.extractfile(member)
                yield _checked(item, f.read() if f else None)
    for item in wanted.values():
        yield item, None, "not found in the archive"


def _checked(item: Item, data: bytes | None) -> tuple[Item, bytes | None, str | None]:
    if data is None:
        return item, None, "unreadable"
    if data[128:132] != b"DICM":
        return (item, data, None) if item.referenced else (item, None, "not DICOM")
    if meta_element(data, 0x0002) == MEDIA_STORAGE_DIRECTORY:
        return item, None, "a DICOMDIR, not an instance"
    return item, data, None


def meta_element(data: bytes, element: int) -> str | None:
    """A text element of a PS3.10 file's meta group (always Explicit VR Little Endian), e.g.
    0x0003 the Media Storage SOP Instance UID; None when absent."""
    at = 132
    while at + 8 <= len(data):
        group, number = struct.unpack_from("<HH", data, at)
        if group != 0x0002:
            return None
        vr = data[at + 4 : at + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", data, at + 8)
            at += 12
        else:
            (length,) = struct.unpack_from("<H", data, at + 6)
            at += 8
        if number == element:
            return data[at : at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        at += length
    return None


def sop_instance_uid(data: bytes) -> str:
    """The data set's SOP Instance UID (0008,0018), which the server answers with (the meta
    group's may differ); "" when there is none. Found by its tag's bytes, early in the data
    set (group 0008 comes first), so that no file needs parsing; pydicom reads the rare file
    where that fails (deflated, unusual)."""
    for tag, order in ((b"\x08\x00\x18\x00", "<"), (b"\x00\x08\x00\x18", ">")):
        at = data.find(tag, 132 if data[128:132] == b"DICM" else 0)
        if at < 0:
            continue
        if data[at + 4 : at + 6] == b"UI":
            (length,) = struct.unpack_from(order + "H", data, at + 6)
            value = data[at + 8 : at + 8 + length]
        else:  # Implicit VR Little Endian
            (length,) = struct.unpack_from("<L", data, at + 4)
            value = data[at + 8 : at + 8 + min(length, 64)]
        uid = value.rstrip(b"\x00 ")
        if 0 < len(uid) <= 64 and not uid.strip(b"0123456789."):
            return uid.decode("ascii")
    return _parsed_uid(data)


def _parsed_uid(data: bytes) -> str:
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE  # the server judges
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        return str(ds.get("SOPInstanceUID", "")).rstrip("\x00 ")
    except Exception:
        return ""
