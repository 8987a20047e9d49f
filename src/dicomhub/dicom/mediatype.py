"""Media types and Accept negotiation for DICOMweb (PS3.18 section 8.7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomhub.dicom.codecs import (
    BIG_ENDIAN,
    EXPLICIT_VR_LE,
    MEDIA_DEFAULTS,
    OCTETS,
    SYNTAXES,
    TARGETS,
)
from dicomhub.errors import InvalidRequest, NotAcceptable


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


NOTHING = MediaType("none/none")  # what an Accept header of q=0 ranges only accepts


def parse_accept(header: str | None) -> list[MediaType]:
    """Accept ranges ordered by preference (q, then order given); empty means anything."""
    if not header or not header.strip():
        return []
    ranges = [parse_media_type(p) for p in _split(header, ",") if p.strip()]
    ranked = sorted(enumerate(ranges), key=lambda pair: (-pair[1].q, pair[0]))
    acceptable = [r for _, r in ranked if r.q > 0]
    return acceptable or [NOTHING]  # every range had q=0


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    if '"' not in text:
        return text.split(sep)
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


Offer = tuple[str, str]  # (media type, transfer syntax UID) one item is served as
DICOM = "application/dicom"


@dataclass(frozen=True)
class Item:
    """One thing to serve, an instance or an instance's pixel data, and the syntaxes it can be
    served in: as stored, or converted to one of ``targets``."""

    stored: str
    targets: frozenset[str] = frozenset()
    frames: bool = False  # frames are typed by their syntax's media; instances are DICOM
    note: str = ""  # why it cannot be converted, told when nothing acceptable is left

    def media(self, syntax: str) -> str:
        if not self.frames:
            return DICOM
        known = SYNTAXES.get(syntax)
        return known.media if known else OCTETS

    def offers(self) -> list[Offer]:
        syntaxes = [self.stored] + [t for t in TARGETS if t in self.targets and t != self.stored]
        return [(self.media(s), s) for s in syntaxes]

    def choose(self, wanted: MediaType, syntax: str | None) -> Offer | None:
        """How this item is served for the range ``wanted`` and its transfer-syntax parameter
        (PS3.18 section 8.7.3): ``*`` as stored, none the range's default."""
        stored_media = self.media(self.stored)
        if syntax == "*":
            if wanted.matches(stored_media):
                return stored_media, self.stored
            if self.frames and wanted.type == OCTETS:  # compressed frames as octets, as peers do
                return OCTETS, self.stored
            syntax = MEDIA_DEFAULTS.get(wanted.type)
        elif syntax is None:
            syntax = self._default(wanted, stored_media)
        possible = syntax == self.stored or syntax in self.targets
        if syntax and possible and wanted.matches(self.media(syntax)):
            return self.media(syntax), syntax
        return None

    def _default(self, wanted: MediaType, stored_media: str) -> str | None:
        """The syntax a range without transfer-syntax means. Instances go out in Explicit VR
        Little Endian unless their pixels are lossy or cannot be decoded (PS3.18 section
        8.7.3.3); frames as stored when that is of the wanted media type, else in its default
        syntax."""
        if wanted.type == "*/*":
            return self.stored
        if not self.frames:
            syntax = SYNTAXES.get(self.stored)
            lossy = bool(syntax and syntax.lossy)
            return EXPLICIT_VR_LE if EXPLICIT_VR_LE in self.targets and not lossy else self.stored
        if wanted.matches(stored_media) and self.stored != BIG_ENDIAN:
            return self.stored
        return MEDIA_DEFAULTS.get(wanted.type)


@dataclass(frozen=True)
class Choice:
    multipart: bool
    served: list[Offer]  # one per item, in order


def negotiate(accept: list[MediaType], items: list[Item], single_allowed: bool) -> Choice:
    """Pick the first Accept range every item can be served in (PS3.18 section 8.7.5).

    ``*/*`` and ``multipart/related`` without ``type`` mean multipart, each item as stored.
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
        served = [item.choose(MediaType(wanted), syntax) for item in items]
        if all(served):
            return Choice(multipart, served)
    available = sorted({f"{mt}; transfer-syntax={ts}" for i in items for mt, ts in i.offers()})
    single = "" if single_allowed and len(items) == 1 else " (as multipart/related)"
    notes = "".join(sorted({f"; {i.note}" for i in items if i.note}))
    raise NotAcceptable(
        "none of the accepted media types can be served; "
        f"available{single}: {', '.join(available)}{notes}"
    )
