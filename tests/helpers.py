"""Building STOW requests, storing files in a running server, and what it stored."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import asyncpg
import httpx

BOUNDARY = "test-boundary-1234"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(*parts: bytes | tuple[str | None, bytes]) -> bytes:
    """A multipart/related body; a part is bytes (application/dicom) or (content type, bytes)."""
    out = b""
    for part in parts:
        ctype, data = part if isinstance(part, tuple) else ("application/dicom", part)
        out += f"--{BOUNDARY}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def stow(client, *parts, version=2, study=None, headers=None):
    url = f"/v{version}/studies" + (f"/{study}" if study else "")
    h = {"Content-Type": MULTIPART}
    h.update(headers or {})
    return client.post(url, content=multipart(*parts), headers=h)


def failures(response) -> list[int]:
    items = response.json().get("00081198", {}).get("Value", [])
    return [i["00081197"]["Value"][0] for i in items]


def stored_uids(response) -> list[str]:
    items = response.json().get("00081199", {}).get("Value", [])
    return [i["00081155"]["Value"][0] for i in items]


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of process ``pid`` so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def store_files(url: str, *files: bytes) -> None:
    """Store each file by a plain STOW-RS request to the server at ``url``; one an earlier
    module stored already (409) is fine."""
    for data in files:
        r = httpx.post(
            url + "/v2/studies",
            content=data,
            headers={"Content-Type": "application/dicom"},
            timeout=60,
        )
        assert r.status_code in (200, 202, 409), r.text


def stored_blobs(data_dir: Path, index_url: str | None = None) -> list[bytes]:
    """The stored blobs of an archive in ``data_dir``: its blob folder's instance files, and the
    small instances its index keeps itself (``kept_blobs``). A file deleted while it is listed
    is not counted."""
    found = []
    for path in sorted((data_dir / "blobs").rglob("*.dcm")):
        try:  # a cleanup job running beside the caller may delete a file once listed
            found.append(path.read_bytes())
        except FileNotFoundError:
            continue
    return found + list(kept_blobs(data_dir, index_url).values())


def kept_blobs(data_dir: Path, index_url: str | None = None) -> dict[int, bytes]:
    """{version: file} of the small instances an archive's index keeps itself (``kept_blob``):
    its SQLite file in ``data_dir``, or ``index_url``'s PostgreSQL."""
    sql = "SELECT version, data FROM kept_blob"
    if index_url:

        async def read() -> dict[int, bytes]:
            conn = await asyncpg.connect(index_url)
            try:
                return {row[0]: bytes(row[1]) for row in await conn.fetch(sql)}
            finally:
                await conn.close()

        return asyncio.run(read())
    index = data_dir / "index.sqlite"
    if not index.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
        return {row[0]: bytes(row[1]) for row in db.execute(sql)}
