"""Building STOW requests."""

from __future__ import annotations

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
