"""Media types and Accept negotiation for DICOMweb (PS3.18 section 8.7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomhub.errors import InvalidRequest, NotAcceptable

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

# PS3.18 table 8.7.3-4/-5: the image media type of each compressed transfer syntax.
PIXEL_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}


@dataclass(frozen=True)
class MediaType:
    type: str  # "multipart/related", "application/dicom", "*/*", ...
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, concrete: str) -> bool:
        """Does this (possibly wildcard) range cover the concrete type ``concrete``?"""
        major, _, minor = self.type.partition("/")
        c_major, _, c_minor = concrete.partition("/")
        return (major in ("*", c_major)) and (minor in ("*", c_minor))


def parse_media_type(text: str) -> MediaType:
    pieces = _split(text, ";")
    kind = pieces[0].strip().lower()
    if "/" not in kind:
        raise InvalidRequest(f"{text[:100]!r} is not a media type")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError as exc:
                raise InvalidRequest(f"bad q value {value!r} in {text[:100]!r}") from exc
        else:
            params[name] = value
    return MediaType(kind, params, q)


def parse_accept(header: str | None) -> list[MediaType]:
    """Accept ranges ordered by preference (q, then order given); empty means anything."""
    if not header or not header.strip():
        return []
    ranges = [parse_media_type(p) for p in _split(header, ",") if p.strip()]
    ranked = sorted(enumerate(ranges), key=lambda pair: (-pair[1].q, pair[0]))
    return [r for _, r in ranked if r.q > 0]


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return out


Offer = tuple[str, str]  # (media type, transfer syntax UID) one item can be served as


@dataclass(frozen=True)
class Choice:
    multipart: bool
    served: list[Offer]  # one per item, in order


def negotiate(accept: list[MediaType], items: list[list[Offer]], single_allowed: bool) -> Choice:
    """Pick the first Accept range every item can be served in (PS3.18 section 8.7.5).

    ``transfer-syntax=*`` or no ``transfer-syntax`` parameter means "as stored"; an explicit
    syntax must be one each item is offered in. ``*/*`` and ``multipart/related`` without
    ``type`` mean multipart with each item's first offer.
    """
    for media in accept or [MediaType("*/*")]:
        if media.type in ("multipart/related", "multipart/*"):
            multipart, wanted = True, media.params.get("type", "*/*").lower()
        elif media.type == "*/*":
            multipart, wanted = True, "*/*"
        else:
            multipart, wanted = False, media.type
        if not multipart and (not single_allowed or len(items) != 1):
            continue
        syntax = media.params.get("transfer-syntax")
        wanted_range = MediaType(wanted)
        served = []
        for offers in items:
            match = next(
                (
                    (mt, ts)
                    for mt, ts in offers
                    if wanted_range.matches(mt) and syntax in (None, "*", ts)
                ),
                None,
            )
            if match is None:
                break
            served.append(match)
        else:
            return Choice(multipart, served)
    available = sorted({f"{mt}; transfer-syntax={ts}" for offers in items for mt, ts in offers})
    single = "" if single_allowed and len(items) == 1 else " (as multipart/related)"
    raise NotAcceptable(
        "none of the accepted media types can be served without transcoding, which is not "
        f"supported yet; available{single}: {', '.join(available)}"
    )
