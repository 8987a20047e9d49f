"""WADO-URI requests (PS3.18 chapter 9): the query parameters, checked and typed, and the
choice of the media type served.

A request names one instance (``studyUID``, ``seriesUID``, ``objectUID``) and asks for it as
``application/dicom`` (Retrieve DICOM Instance, 9.4) or as a rendered image (Retrieve Rendered
Instance, 9.5). Parameter names are matched case-insensitively, as the WADO-RS ones are; a
parameter given twice, a malformed value or an ill-defined region is a 400 (9.5.2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from dicomhub.dicom.codecs import DEFAULT_QUALITY
from dicomhub.dicom.mediatype import MediaType, parse_accept
from dicomhub.dicom.render import MEDIA_TYPES, Params, Viewport
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import InvalidRequest, NotAcceptable

DICOM = "application/dicom"
MAX_SIZE = 8192  # rows and columns of a rendered image, as the WADO-RS viewport
RENDERING = (
    "frameNumber",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
)
# accepted and ignored: no burnt-in text, no character set conversion, no presentation states
IGNORED = ("charset", "annotation", "imageAnnotation", "presentationUID", "presentationSeriesUID")
KNOWN = (
    "requestType",
    "studyUID",
    "seriesUID",
    "objectUID",
    "contentType",
    "transferSyntax",
    "anonymize",
    *RENDERING,
    *IGNORED,
)


@dataclass(frozen=True)
class UriRequest:
    study: str
    series: str
    sop: str
    content_types: list[MediaType]  # in preference order; empty: none asked
    transfer_syntax: str | None = None
    frame: int | None = None
    rows: int | None = None
    columns: int | None = None
    region: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax (0-1)
    window: tuple[float, float] | None = None  # center, width
    quality: int | None = None
    rendering: tuple[str, ...] = ()  # the rendering parameters given (names as in RENDERING)
    anonymize: bool = False  # anonymize=yes (PS3.18 9.4: de-identified, Basic Profile)

    def params(self, media: str, image_rows: int, image_columns: int) -> Params:
        """The rendering of an image of ``image_rows`` x ``image_columns`` pixels (9.5.1.2):
        crop to the region, then fit in rows x columns keeping the aspect ratio (one of them
        given: the other follows from the aspect ratio)."""
        window = (*self.window, "LINEAR") if self.window else None
        quality = self.quality if self.quality is not None else DEFAULT_QUALITY
        return Params(media, quality, window, self._viewport(image_rows, image_columns))

    def _viewport(self, height: int, width: int) -> Viewport | None:
        region = None
        if self.region is not None:
            x0, y0, x1, y1 = self.region
            sx, sy = math.floor(x0 * width), math.floor(y0 * height)
            sw = max(1, math.ceil(x1 * width) - sx)
            sh = max(1, math.ceil(y1 * height) - sy)
            region, width, height = (sx, sy, sw, sh), sw, sh
        if self.rows is None and self.columns is None:
            return Viewport(width, height, region) if region else None
        # the dimension not given is bounded by the largest size served, not left open
        return Viewport(self.columns or MAX_SIZE, self.rows or MAX_SIZE, region)


def parse(pairs: Iterable[tuple[str, str]]) -> UriRequest:
    """The request's query parameters (as received, in order) checked and typed."""
    values: dict[str, str] = {}
    names = {name.lower(): name for name in KNOWN}
    for key, value in pairs:
        name = names.get(key.lower())
        if name is None:
            continue  # unknown parameters are ignored (PS3.18 8.3)
        if name in values:
            raise InvalidRequest(f"{name} is given more than once")
        values[name] = value.strip()
    request_type = values.get("requestType")
    if request_type is None:
        raise InvalidRequest("requestType=WADO is required (a WADO-URI request, PS3.18 9.1)")
    if request_type != "WADO":
        raise InvalidRequest(f"requestType {request_type[:40]!r} is not supported: only WADO")
    uids = {}
    for name, keyword in (
        ("studyUID", "StudyInstanceUID"),
        ("seriesUID", "SeriesInstanceUID"),
        ("objectUID", "SOPInstanceUID"),
    ):
        if not values.get(name):
            raise InvalidRequest(f"{name} is required")
        uids[name] = require_uid(values[name], f"{name} ({keyword})")
    anonymize = values.get("anonymize")
    if anonymize is not None and anonymize != "yes":
        raise InvalidRequest(f"anonymize takes only the value yes, not {anonymize[:40]!r}")
    syntax = values.get("transferSyntax")
    if syntax is not None and syntax != "*":
        require_uid(syntax, "transferSyntax")
    window = None
    if "windowCenter" in values or "windowWidth" in values:
        if "windowCenter" not in values or "windowWidth" not in values:
            raise InvalidRequest("windowCenter and windowWidth go together")
        window = (_decimal(values, "windowCenter"), _decimal(values, "windowWidth"))
        if window[1] < 1:
            raise InvalidRequest("windowWidth must be at least 1")
    return UriRequest(
        study=uids["studyUID"],
        series=uids["seriesUID"],
        sop=uids["objectUID"],
        content_types=_content_types(values.get("contentType")),
        transfer_syntax=syntax,
        frame=_uint(values, "frameNumber", 1, None),
        rows=_uint(values, "rows", 1, MAX_SIZE),
        columns=_uint(values, "columns", 1, MAX_SIZE),
        region=_region(values.get("region")),
        window=window,
        quality=_uint(values, "imageQuality", 1, 100),
        rendering=tuple(n for n in RENDERING if n in values),
        anonymize=anonymize == "yes",
    )


def _content_types(text: str | None) -> list[MediaType]:
    """contentType: one media type, or a comma list with q values (PS3.18 9.1.2.2.1)."""
    if text is None:
        return []
    if not text:
        raise InvalidRequest("contentType is empty")
    return parse_accept(text)


def _uint(values: dict[str, str], name: str, low: int, high: int | None) -> int | None:
    text = values.get(name)
    if text is None:
        return None
    valid = text.isascii() and text.isdigit() and len(text) <= 18  # int() refuses 4,300 digits
    if not valid or not low <= int(text) <= (high or int(text)):
        upper = f" to {high}" if high else " or more"
        raise InvalidRequest(f"{name} must be an integer from {low}{upper}, not {text[:40]!r}")
    return int(text)


def _decimal(values: dict[str, str], name: str) -> float:
    text = values[name]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a decimal number, not {text[:40]!r}")
    return value


def _region(text: str | None) -> tuple[float, float, float, float] | None:
    """xmin,ymin,xmax,ymax, fractions of the image's width and height (PS3.18 9.5.1.2.5)."""
    if text is None:
        return None
    try:
        x0, y0, x1, y1 = (float(p) for p in text.split(","))
    except ValueError:
        x0 = y0 = x1 = y1 = math.nan
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise InvalidRequest(
            f"region {text[:80]!r} is ill-defined: it is xmin,ymin,xmax,ymax, each from 0.0 "
            "to 1.0, with xmin < xmax and ymin < ymax"
        )
    return x0, y0, x1, y1


def offered(renderable: bool, has_pixels: bool) -> tuple[str, ...]:
    """What an instance is served as, the default first: a rendered JPEG when it has pixel data
    that can be rendered (PS3.18 9.3: no contentType and any Accept mean image/jpeg), else the
    DICOM instance itself (PS3.18-2013 7.2 and 7.4: non-image objects as application/dicom)."""
    if not has_pixels:
        return (DICOM,)
    if renderable:
        return (*MEDIA_TYPES, DICOM)
    return (DICOM, *MEDIA_TYPES)


def select(request: UriRequest, accept: list[MediaType], offers: tuple[str, ...]) -> str:
    """The first media type of ``contentType`` (by q, then order) the instance is offered in
    and the Accept header allows (9.1.2.2.1: contentType must agree with Accept)."""
    for wanted in request.content_types or [MediaType("*/*")]:
        for media in offers:
            if wanted.matches(media) and (not accept or any(a.matches(media) for a in accept)):
                return media
    asked = ", ".join(m.type for m in request.content_types) or "any"
    raise NotAcceptable(
        f"this instance is served as {', '.join(offers)}; contentType ({asked}) and the Accept "
        "header allow none of them"
    )
