"""multipart/related codec (RFC 2046, RFC 2387) as used by STOW-RS and WADO-RS (PS3.18 8.6).

The parser is push-based and streaming: feed it chunks, it yields events, and never holds more
than one chunk plus a boundary's length of body data, so a part of any size streams through.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from dicomhub.errors import InvalidRequest

MAX_HEADER_BYTES = 16 * 1024
# RFC 2046 says at most 70 characters, but real clients send longer ones (Orthanc's DICOMweb
# client: 73, two UUIDs) and Orthanc's own server takes them: refusing breaks those clients.
MAX_BOUNDARY = 256


@dataclass
class PartStart:
    headers: dict[str, str]  # lower-case names


@dataclass
class PartData:
    data: bytes | memoryview  # a view of the chunk fed, valid as long as the chunk is


@dataclass
class PartEnd:
    pass


class MultipartParser:
    def __init__(self, boundary: str):
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise InvalidRequest(f"multipart boundary must be 1 to {MAX_BOUNDARY} characters")
        self._dash = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash
        self._buffer = b""
        self._padding = 0  # transport padding (spaces, tabs) seen after the last boundary
        self._state = "preamble"  # preamble, after_boundary, headers, body, epilogue

    @property
    def finished(self) -> bool:
        return self._state == "epilogue"

    @property
    def closing(self) -> bool:
        """The closing delimiter has been received (it may not have been parsed yet): no part
        starts after the one that ended."""
        if self._state == "after_boundary":
            return self._buffer.lstrip(b" \t").startswith(b"--")
        return self._state == "epilogue"

    def feed(self, chunk: bytes) -> Iterator[PartStart | PartData | PartEnd]:
        if self._state == "body" and self._inside(chunk):
            # The middle of a part (most of a large one): its bytes go out as they came, the
            # chunk as a view, not joined to the held tail and sliced again; only the chunk's
            # own tail is held, since it may begin a delimiter.
            if self._buffer:
                yield PartData(self._buffer)
            keep = len(self._delimiter) - 1
            yield PartData(memoryview(chunk)[:-keep])
            self._buffer = chunk[-keep:]
            return
        self._buffer += chunk
        while (yield from self._step()):
            pass

    def _inside(self, chunk: bytes) -> bool:
        """No delimiter starts in the held tail or in ``chunk`` (itself at least as long as a
        delimiter)."""
        size = len(self._delimiter)
        return (
            len(chunk) >= size
            and self._delimiter not in self._buffer + chunk[: size - 1]
            and self._delimiter not in chunk
        )

    def close(self) -> None:
        if self._state != "epilogue":
            raise InvalidRequest(
                "malformed multipart body: it ends before the closing boundary "
                f"'{self._dash.decode('latin-1')}--'"
            )

    def _step(self):
        buf = self._buffer
        if self._state == "preamble":
            if buf.startswith(self._dash):
                self._buffer = buf[len(self._dash) :]
                self._state = "after_boundary"
                return True
            at = buf.find(self._delimiter)
            if at < 0:
                self._buffer = buf[-len(self._delimiter) :]
                return False
            self._buffer = buf[at + len(self._delimiter) :]
            self._state = "after_boundary"
            return True
        if self._state == "after_boundary":
            stripped = buf.lstrip(b" \t")
            self._padding += len(buf) - len(stripped)
            if self._padding > MAX_HEADER_BYTES:  # linear: the padding is dropped as it comes
                raise InvalidRequest(
                    f"malformed multipart body: more than {MAX_HEADER_BYTES} bytes of "
                    "padding after a boundary"
                )
            if len(stripped) < 2:
                self._buffer = stripped
                return False
            self._padding = 0
            if stripped.startswith(b"--"):
                self._state = "epilogue"
                self._buffer = b""
                return True
            if not stripped.startswith(b"\r\n"):
                raise InvalidRequest("malformed multipart body: boundary not followed by CRLF")
            self._buffer = stripped[2:]
            self._state = "headers"
            return True
        if self._state == "headers":
            if buf.startswith(b"\r\n"):  # a part without headers
                end, skip = 0, 2
            else:
                end, skip = buf.find(b"\r\n\r\n"), 4
            if end > MAX_HEADER_BYTES or (end < 0 and len(buf) > MAX_HEADER_BYTES):
                raise InvalidRequest(
                    f"malformed multipart body: part headers longer than {MAX_HEADER_BYTES} bytes"
                )
            if end < 0:
                return False
            headers = _parse_headers(buf[:end])
            self._buffer = buf[end + skip :]
            self._state = "body"
            yield PartStart(headers)
            return True
        if self._state == "body":
            at = buf.find(self._delimiter)
            if at < 0:
                keep = len(self._delimiter) - 1
                if len(buf) > keep:
                    yield PartData(buf[:-keep])
                    self._buffer = buf[-keep:]
                return False
            if at:
                yield PartData(buf[:at])
            self._buffer = buf[at + len(self._delimiter) :]
            self._state = "after_boundary"
            yield PartEnd()
            return True
        self._buffer = b""  # epilogue is ignored
        return False


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InvalidRequest(f"malformed multipart part header: {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def new_boundary() -> str:
    return "dicomhub-" + os.urandom(12).hex()


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")


PART_END = b"\r\n"  # follows every part body, before the next boundary line
