"""Small helpers shared by the route modules."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any, BinaryIO

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from dicomhub.archive.archive import Archive
from dicomhub.dicom.mediatype import parse_accept
from dicomhub.dicom.multipart import PART_END, closing, new_boundary, part_header
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import InvalidRequest, NotAcceptable, PayloadTooLarge, RangeNotSatisfiable
from dicomhub.model import DEFAULT_PARTITION, Scope, StoredInstance

DICOM_JSON = "application/dicom+json"
ZEROCOPY = "http.response.zerocopysend"  # the ASGI extension (see web/zerocopy.py)
REQUEST_ID = "dicomhub.request_id"  # the request's id, in the scope (set by web/audit)
PARTITION = "dicomhub.partition"  # the request's data partition, in the scope (web/partitions)
MAX_JSON_BODY = 1024 * 1024
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
MAX_OFFSET = 2**53 - 1  # a paging offset (or change-feed sequence) any client and index can hold


def archive(request: Request) -> Archive:
    return request.app.state.archive


def version(request: Request) -> int:
    return int(request.scope["route_version"])


def base_url(request: Request, partitioned: bool = True) -> str:
    """The DICOMweb root of this request's API version, and of its data partition unless not
    ``partitioned`` (the server's own routes: operations), ending in a slash."""
    root = request.app.state.public_url or _request_root(request)
    partition = request.scope.get(PARTITION) if partitioned else None
    within = f"partitions/{partition}/" if partition else ""
    return f"{root.rstrip('/')}/v{version(request)}/{within}"


def partition_of(request: Request) -> str:
    """The data partition a request addresses (web/partitions checked it)."""
    return request.scope.get(PARTITION, DEFAULT_PARTITION)


_roots: dict[tuple, str] = {}  # a few entries: the names this server is reached under


def _request_root(request: Request) -> str:
    """``_root`` of the request, worked out once per scheme, server, root path and Host."""
    scope, headers = request.scope, request.headers
    server = scope.get("server")
    key = (
        scope.get("scheme"),
        tuple(server) if server else None,
        scope.get("root_path"),
        scope.get("app_root_path"),
        headers.get("host"),
        "x-forwarded-host" in headers or "x-forwarded-proto" in headers,
    )
    root = _roots.get(key)
    if root is None:
        if len(_roots) >= 256:
            _roots.clear()
        root = _roots[key] = _root(request)
    return root


def _root(request: Request) -> str:
    url = request.base_url
    server = request.scope.get("server")
    host = request.headers.get("host", "")
    # Some clients (dicomweb-client) send a Host header without the port; when nothing says
    # a proxy is in between, the port the connection came in on is the one to give back.
    proxied = "x-forwarded-host" in request.headers or "x-forwarded-proto" in request.headers
    if server and ":" not in host and url.port is None and not proxied:
        default = 443 if url.scheme == "https" else 80
        if server[1] != default:
            url = url.replace(port=server[1])
    return str(url)


def scope_of(request: Request) -> Scope:
    p = request.path_params
    return Scope(
        study=require_uid(p["study"], "StudyInstanceUID"),
        series=require_uid(p["series"], "SeriesInstanceUID") if "series" in p else None,
        sop=require_uid(p["sop"], "SOPInstanceUID") if "sop" in p else None,
        partition=partition_of(request),
    )


ORIGINAL = "msdicom-request-original"  # Microsoft's header (reference 6.9)


def retrieve_scope(request: Request) -> Scope:
    """The scope of a WADO-RS retrieve or metadata request: on v2, ``msdicom-request-original:
    true`` asks for the original version of each instance (as first stored, before an upsert
    replaced it); v1 ignores the header, as Microsoft's server does."""
    scope = scope_of(request)
    raw = request.headers.get(ORIGINAL)
    if raw is None or version(request) < 2:
        return scope
    value = raw.strip().lower()
    if value not in ("true", "false"):  # as ASP.NET binds the header in Microsoft's server
        raise InvalidRequest(f"{ORIGINAL} must be true or false, not {raw[:64]!r}")
    return dataclasses.replace(scope, original=True) if value == "true" else scope


def vary(request: Request) -> str:
    """The request headers a WADO-RS retrieve or metadata response varies with."""
    return "Accept" if version(request) < 2 else f"Accept, {ORIGINAL}"


def require_json_accept(request: Request) -> str:
    """JSON responses (metadata, STOW): application/dicom+json, or application/json when
    only that is accepted; no Accept means application/dicom+json."""
    ranges = parse_accept(request.headers.get("accept"))
    for media in ranges:
        if media.matches(DICOM_JSON):
            return DICOM_JSON
        if media.matches("application/json"):
            return "application/json"
    if not ranges:
        return DICOM_JSON
    raise NotAcceptable(f"this resource is served as {DICOM_JSON} (or application/json)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=a-b`` range as (offset, length); None when absent (RFC 9110 14.2)."""
    if not header:
        return None
    unit = header.partition("=")[0].strip().lower()
    if unit != "bytes":  # a unit the server does not know is ignored (RFC 9110 14.2)
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m or m.groups() == ("", ""):
        raise InvalidRequest(f"unsupported Range {header[:100]!r}: use one bytes=first-last range")
    first, last = m.groups()
    if first == "":  # suffix: the last N bytes (none: unsatisfiable, RFC 9110 14.1.1)
        length = min(_position(last), size)
        if length == 0:
            raise RangeNotSatisfiable(f"range {header[:100]!r} asks for no bytes", size)
        return size - length, length
    start = _position(first)
    end = min(_position(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {header[:100]!r} lies outside the {size} bytes", size)
    return start, end - start + 1


def _position(digits: str) -> int:
    """A byte position of a Range; all past 2^63 are the same (and int() refuses to read
    more than 4,300 digits)."""
    return int(digits) if len(digits) <= 18 else 2**63


def not_modified(request: Request, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2: weak comparison) names ``etag``."""
    wanted = request.headers.get("if-none-match")
    if not wanted:
        return False
    return wanted.strip() == "*" or _opaque(etag) in [_opaque(t) for t in wanted.split(",")]


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def cache_headers(
    instance: StoredInstance, representation: str = "", weak: bool = False
) -> dict[str, str]:
    """Stored instances never change, so their version validates what is made of them; each
    representation of a resource (media type, transfer syntax, rendering parameters; empty:
    the stored file itself) gets a validator of its own, so that a client or cache holding one
    is never told (304) it holds another, and the response varies with Accept. A multipart
    body's boundary is new each time: its validator is weak."""
    tag = str(instance.version)
    if representation:
        tag += "-" + hashlib.sha256(representation.encode()).hexdigest()[:16]
    return {
        "ETag": f'{"W/" if weak else ""}"{tag}"',
        "Last-Modified": format_datetime(instance.created, usegmt=True),
        "Vary": "Accept",
    }


def not_modified_response(headers: dict[str, str]) -> Response:
    kept = ("ETag", "Vary", "Last-Modified")
    return Response(status_code=304, headers={k: v for k, v in headers.items() if k in kept})


def param(q, name: str) -> str | None:
    """Query parameter names are case-insensitive (includeMetadata, includemetadata)."""
    for key, value in q.items():
        if key.lower() == name.lower():
            return value
    return None


def time_param(q, name: str) -> datetime | None:
    """An ISO 8601 date-time parameter, which must carry its UTC offset."""
    raw = param(q, name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+"))
    except ValueError as exc:
        raise InvalidRequest(f"{name} {raw[:60]!r} is not an ISO 8601 date-time") from exc
    if value.tzinfo is None:
        raise InvalidRequest(f"{name} must carry a UTC offset or Z, e.g. 2024-05-03T10:58:00Z")
    return value


def page(request: Request, default: int, maximum: int) -> tuple[int, int]:
    """``offset`` and ``limit`` of a paged listing (limit 1 to ``maximum``)."""
    values = {}
    for name, fallback in (("offset", 0), ("limit", default)):
        raw = param(request.query_params, name)
        try:
            values[name] = fallback if raw is None else int(raw)
        except ValueError as exc:
            raise InvalidRequest(f"{name} must be an integer, not {raw[:40]!r}") from exc
    if not 1 <= values["limit"] <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}")
    if not 0 <= values["offset"] <= MAX_OFFSET:
        raise InvalidRequest(f"offset must be between 0 and {MAX_OFFSET}")
    return values["offset"], values["limit"]


def header_text(text: str) -> str:
    """``text`` as the content of a quoted string in a response header (RFC 9110 5.6.4): what
    a client sent may hold characters a header cannot carry (non-Latin-1, controls) and
    quotes; those are replaced and escaped, never passed through."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return safe.replace("\\", "\\\\").replace('"', '\\"')


def warning(request: Request, text: str) -> str:
    """A PS3.18 Warning header value, ``299 <service>: "<text>"``: the service is the DICOMweb
    root of the request's route (its host, before routing)."""
    service = base_url(request).rstrip("/") if "route_version" in request.scope else ""
    return f'299 {service or request.url.netloc}: "{header_text(text)}"'


def refuse_declared_size(request: Request, limit: int, what: str) -> None:
    """413 before a byte of the body is read when its Content-Length already says it is over
    ``limit`` (the body is left unread: the answer closes the connection)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} may be at most {limit} bytes; this one says {declared}")


async def json_body(request: Request) -> Any:
    """A JSON request body (at most MAX_JSON_BODY bytes)."""
    refuse_declared_size(request, MAX_JSON_BODY, "a JSON body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLarge(f"a JSON body may be at most {MAX_JSON_BODY} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "it nests too deep" if isinstance(exc, RecursionError) else exc
        raise InvalidRequest(f"the body is not JSON: {reason}") from None


def multipart_response(parts: list[bytes], part_type: str, headers: dict[str, str]) -> Response:
    """A multipart/related body of ``parts``, each typed ``part_type``, held in memory."""
    boundary = new_boundary()
    body = b"".join(part_header(boundary, part_type) + p + PART_END for p in parts)
    media = part_type.split(";")[0]
    return Response(
        body + closing(boundary), media_type=multipart_type(media, boundary), headers=headers
    )


def multipart_type(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def zero_copy(request: Request) -> bool:
    """Does the server send files for us (the ASGI zero-copy send extension)?"""
    return ZEROCOPY in request.scope.get("extensions", {})


@dataclass(frozen=True)
class FileRange:
    """``count`` bytes of an open local file from ``offset``, in a response body: the server's
    kernel sends them (only produced when ``zero_copy``). The response closes the file."""

    file: BinaryIO
    offset: int
    count: int


Body = FileRange | AsyncIterator[bytes]


async def pieces(source: Body) -> AsyncIterator[bytes | FileRange]:
    """A body of one source, for ``StreamedResponse``."""
    if isinstance(source, FileRange):
        yield source
        return
    try:
        async for chunk in source:
            yield chunk
    finally:
        await close_stream(source)


async def close_stream(source) -> None:
    """Close a stream (an async generator that may hold an open file) left part-way."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


class StreamedResponse(StreamingResponse):
    """A StreamingResponse whose body yields bytes and ``FileRange`` pieces (the latter sent by
    the server's zero-copy extension)."""

    async def stream_response(self, send: Send) -> None:
        try:
            await self._stream(send)
        finally:  # a client that left: its files are closed now, not whenever the GC runs
            with anyio.CancelScope(shield=True):
                await close_stream(self.body_iterator)

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for piece in self.body_iterator:
            if isinstance(piece, FileRange):
                try:
                    await send(
                        {
                            "type": ZEROCOPY,
                            "file": piece.file,
                            "offset": piece.offset,
                            "count": piece.count,
                            "more_body": True,
                        }
                    )
                finally:
                    piece.file.close()
            else:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
