"""A corpus of hostile requests: malformed multipart, truncated, oversized and lying DICOM, bad
UIDs, path tricks, huge and malformed query strings and parameters, Deflate bombs, deeply
nested and overly wide data sets, abusive headers and broken HTTP. Each is a raw HTTP/1.1
request (so paths reach the server exactly as written), and each must get a 4xx.

The server under test runs with the limits of LIMITS; BASE is the instance stored before.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from tests.synthetic import instance, uid  # noqa: F401 - uid is used by the tests too

LIMITS = {
    "max_part_size": str(4 * 1024**2),
    "max_inflated_size": str(4 * 1024**2),
    "max_elements": "20000",
    "max_parts": "1000",
    "request_timeout": "2",
}
STUDY, SERIES, SOP = uid(80, 1), uid(80, 2), uid(80, 3)
BASE = instance(STUDY, SERIES, SOP, Rows=32, Columns=32).replace(
    b"\xe0\x7f\x10\x00OW\x00\x00\x08\x00\x00\x00" + b"\x00\x01" * 4,
    b"\xe0\x7f\x10\x00OW\x00\x00\x00\x08\x00\x00" + b"\x00\x01" * 1024,
)  # 32 x 32 pixels: the pixel data is bulk data
INSTANCE = f"/v2/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
BOUNDARY = "hostile-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass
class Case:
    name: str
    request: bytes  # the whole HTTP/1.1 request

    def __repr__(self) -> str:
        return self.name


def http(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    raw_headers: bytes = b"",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: dicomhub", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n" + raw_headers + b"\r\n" + body


def stow(body: bytes, content_type: str = MULTIPART, target: str = "/v2/studies") -> bytes:
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    return http("POST", target, headers, body)


def parts(*datas: bytes, ctype: str | None = "application/dicom") -> bytes:
    out = b""
    for data in datas:
        out += f"--{BOUNDARY}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


# -- DICOM built by hand --------------------------------------------------------------------

LONG_VRS = {
    b"OB",
    b"OW",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}


def element(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element (``length`` may lie)."""
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr, 0, n) + value
    return struct.pack("<HH2sH", group, elem, vr, n) + value


def item(content: bytes) -> bytes:
    return (
        struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + content
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    )


def sequence(group: int, elem: int, items: list[bytes]) -> bytes:
    body = b"".join(item(i) for i in items)
    return element(group, elem, b"SQ", body, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def part10(extra: bytes = b"", sop: str = uid(81, 3)) -> bytes:
    """A small valid instance without pixel data, with ``extra`` (raw elements, tags above
    (0020,FFFF)) appended to its data set."""
    out = io.BytesIO()
    _dataset(sop).save_as(out, enforce_file_format=True)
    return out.getvalue() + extra


def _dataset(sop: str, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(81, 1), uid(81, 2), sop
    ds.PatientID = "HOSTILE"
    ds.Modality = "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop or "1.2"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def deflate_bomb(expanded: int) -> bytes:
    """A deflated data set (written by pydicom) that expands to over ``expanded`` bytes."""
    ds = _dataset(uid(81, 4), DeflatedExplicitVRLittleEndian)
    ds.add_new(0x00990010, "LO", "BOMB")
    ds.add_new(0x00991000, "UT", " " * expanded)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = sequence(0x0099, 0x1001, [inner])
    return part10(element(0x0099, 0x0010, b"LO", b"NEST") + inner)


def wide(items: int) -> bytes:
    one = element(0x0008, 0x0100, b"SH", b"CODE") + element(0x0008, 0x0102, b"SH", b"DCM ")
    return part10(element(0x0099, 0x0010, b"LO", b"WIDE") + sequence(0x0099, 0x1001, [one] * items))


def many_elements(count: int) -> bytes:
    assert count < 0xEF00
    out = [element(0x0099, 0x0010, b"LO", b"MANY")]
    out += [element(0x0099, 0x1000 + n, b"US", b"\x01\x00") for n in range(count)]
    return part10(b"".join(out))


# -- the corpus -----------------------------------------------------------------------------


def corpus() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, request: bytes) -> None:
        cases.append(Case(name, request))

    # Malformed multipart and bodies
    good = parts(part10())
    add("no content type", http("POST", "/v2/studies", {"Accept": "application/dicom+json"}, good))
    for ctype in (
        "text/plain",
        "application/json",
        "multipart/form-data; boundary=x",
        "multipart/related",
        "multipart/related; boundary=",
        'multipart/related; boundary="unclosed',
        "multipart/related; boundary=" + "b" * 200,
        "multipart/related; type=application/dicom; boundary=other",
        "image/jpeg",
        "application/dicom+json",
        ";;;",
        "multipart/mixed; boundary=" + BOUNDARY,
    ):
        add(f"content type {ctype[:40]}", stow(good, ctype))
    add("garbage body", stow(b"\x00\xff" * 500))
    add("one null byte", stow(b"\x00"))
    add("no closing delimiter", stow(good[: -len(f"--{BOUNDARY}--\r\n")]))
    add("only a preamble", stow(b"this is not a multipart body at all\r\n"))
    add("LF delimiters", stow(good.replace(b"\r\n", b"\n")))
    add(
        "part headers over 16 KiB",
        stow(
            f"--{BOUNDARY}\r\nX-Pad: {'a' * 17000}\r\n\r\n".encode()
            + part10()
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        ),
    )
    add(
        "header line without a colon",
        stow(
            f"--{BOUNDARY}\r\nnot a header\r\n\r\n".encode()
            + part10()
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        ),
    )
    add("text/plain part", stow(parts(b"hello", ctype="text/plain")))
    add(
        "dicom+json part",
        stow(parts(b'{"00100010": {"vr": "PN"}}', ctype="application/dicom+json")),
    )
    add(
        "nested multipart part", stow(parts(good, ctype=f"multipart/related; boundary={BOUNDARY}x"))
    )
    add("empty parts", stow(parts(b"", b"", b"")))
    add("too many parts", stow(parts(*[b""] * 1001)))
    add("part of JSON", stow(parts(b'{"a": 1}')))
    add("part of zeros", stow(parts(b"\x00" * 4096)))
    add("preamble and DICM only", stow(parts(b"\x00" * 128 + b"DICM")))
    add("single part not DICOM", stow(b"not dicom", "application/dicom"))
    add(
        "part over max_part_size",
        stow(
            parts(
                part10(
                    element(0x0099, 0x0010, b"LO", b"BIG")
                    + element(0x0099, 0x1000, b"OB", b"\x00" * (4 * 1024**2 + 2))
                )
            )
        ),
    )
    add("single part over max_part_size", stow(b"\x00" * (4 * 1024**2 + 10), "application/dicom"))
    add("wrong study in route", stow(parts(part10()), target=f"/v2/studies/{uid(99, 9)}"))

    # Truncated DICOM, as a multipart part and as a single-part body
    head = part10(element(0x0099, 0x0010, b"LO", b"TRUNC"))
    full = head + element(0x0099, 0x1000, b"OB", b"\x01" * 2000)
    cuts = [1 + 14 * n for n in range(10)]  # in the preamble, DICM and the meta group's start
    cuts += [len(head) + 1 + 69 * n for n in range(30)]  # in the last element, never at its end
    for n, cut in enumerate(cuts):
        kind = "single part" if n % 4 == 0 else "multipart"
        body = stow(full[:cut], "application/dicom") if n % 4 == 0 else stow(parts(full[:cut]))
        add(f"truncated at {cut} ({kind})", body)

    # Lying lengths and broken structure
    add(
        "UT claiming 4 GB",
        stow(
            parts(
                part10(
                    element(0x0099, 0x0010, b"LO", b"LIE")
                    + element(0x0099, 0x1000, b"UT", b"x", 0xFFFFFFF0)
                )
            )
        ),
    )
    add(
        "LO claiming more than the file",
        stow(parts(part10(element(0x0099, 0x0010, b"LO", b"LIE", 9000)))),
    )
    add(
        "pixel data past the end",
        stow(parts(part10(element(0x7FE0, 0x0010, b"OW", b"\x00" * 8, 1 << 30)))),
    )
    no_ts = part10().replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x11\x00UI")
    add("no transfer syntax", stow(parts(no_ts)))
    add("item outside a sequence", stow(parts(part10(item(b"")))))
    add(
        "unterminated sequence",
        stow(parts(part10(element(0x0099, 0x1001, b"SQ", b"", 0xFFFFFFFF) + item(b"")[:8]))),
    )
    add(
        "bad VR",
        stow(parts(part10(struct.pack("<HH2sH", 0x0099, 0x1000, b"\xff\xfe", 4) + b"abcd"))),
    )

    # Bad UIDs in the data set
    for bad in ("abc", "1.2.a", "1" * 65, "", "1.2.3\\4.5"):
        add(f"dataset SOP UID {bad[:20]!r}", stow(parts(part10(sop=bad))))

    # Deflate bombs and broken deflate
    add("deflate bomb 64 MiB", stow(parts(deflate_bomb(64 * 1024**2))))
    add("deflate bomb in a single part", stow(deflate_bomb(16 * 1024**2), "application/dicom"))
    add("two deflate bombs", stow(parts(deflate_bomb(8 * 1024**2), deflate_bomb(8 * 1024**2))))
    broken = deflate_bomb(1000)
    add("broken deflate stream", stow(parts(broken[:-40] + b"\xff" * 40)))

    # Deep and wide data sets
    for depth in (65, 200, 1000, 10000, 50000):
        add(f"sequences nested {depth} deep", stow(parts(nested(depth))))
    add("30,000 items in one sequence", stow(parts(wide(10000))))
    add("20,001 elements", stow(parts(many_elements(20001))))

    # Bad UIDs in paths: every kind of route
    bad_uids = [
        "1.2.a",
        "1" * 65,
        ".1.2",
        "1.2.",
        "%00",
        "1.2.3%20",
        "'%20OR%201=1--",
        "%D9%A1.%D9%A2",
    ]
    routes = [
        "/v2/studies/{u}",
        "/v2/studies/{u}/series/1.2/instances/1.3",
        "/v2/studies/{u}/metadata",
        f"/v2/studies/{STUDY}/series/{{u}}/instances/1.3/frames/1",
        f"/v2/studies/{STUDY}/series/{SERIES}/instances/{{u}}/rendered",
        "/v2/studies/{u}/thumbnail",
        f"/v2/studies/{STUDY}/series/{SERIES}/instances/{{u}}/bulkdata/7FE00010",
        "/v2/studies/{u}/series",
    ]
    for route in routes:
        for bad in bad_uids:
            add(f"GET {route} with {bad[:12]}", http("GET", route.format(u=bad)))
    for bad in bad_uids[:4]:
        add(f"DELETE study {bad[:12]}", http("DELETE", f"/v2/studies/{bad}"))
        add(f"STOW to study {bad[:12]}", stow(good, target=f"/v2/studies/{bad}"))

    # Path tricks
    for path in (
        "/v2/studies/../../etc/passwd",
        "/v2/studies/..%2f..%2fetc%2fpasswd",
        f"{INSTANCE}/bulkdata/../../../../etc/passwd",
        f"{INSTANCE}/bulkdata/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"{INSTANCE}/bulkdata/7FE00010/../../x",
        f"{INSTANCE}/bulkdata/ZZZZZZZZ",
        f"{INSTANCE}/bulkdata/00000000",
        f"{INSTANCE}/bulkdata/00081110/99/00081150",
        f"{INSTANCE}/bulkdata/" + "7FE00010/0/" * 300,
        f"{INSTANCE}/bulkdata/",
        "/v2//studies//",
        "/v2/studies/1.2.3%00.4",
        "/v2/studies/1.2.3;jsessionid=x",
        "/v2/studies/1.2.3\\..\\..\\x",
        "/V2/STUDIES",
        "/v3/studies",
        "/v2/studies/*",
        "/v2/extendedquerytags/..%2f..%2fx",
        "/v2/operations/../../x",
        "/v2/operations/not-an-id",
        f"{INSTANCE}/frames/../../x",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/v2/studies/%252e%252e",
        "//etc/passwd",
        "/v2/audit/../../x",
    ):
        add(f"path {path[:50]}", http("GET", path))

    # Query strings and parameters
    for query in (
        "PatientName=" + "A" * 9000,
        "limit=-1",
        "limit=abc",
        "offset=-5",
        "offset=abc",
        "fuzzymatching=maybe",
        "StudyDate=2020-13-45",
        "StudyDate=20201345",
        "StudyDate=abc-def",
        "StudyTime=256060",
        "StudyInstanceUID=abc",
        "ModalitiesInStudy=" + ",".join(["CT"] * 600),
        "fuzzymatching=true&PatientName=" + "+".join(f"w{i}" for i in range(20)),
        "StudyInstanceUID=" + ",".join(["1.2"] * 600),
        "limit=1e9",
        "offset=99999999999999999999999",
        "PatientBirthDate=19800101-19700101-",
        "includefield=" + ",".join(["00100010"] * 2000),
    ):
        add(f"QIDO ?{query[:40]}", http("GET", f"/v2/studies?{query}"))
    for query in (
        "limit=0",
        "limit=201",
        "startTime=yesterday",
        "endTime=2024-01-01T00:00:00",
        "includeMetadata=maybe",
        "offset=-1",
        "startTime=2024-01-02T00:00:00Z&endTime=2024-01-01T00:00:00Z",
    ):
        add(f"change feed ?{query[:40]}", http("GET", f"/v2/changefeed?{query}"))
    for query in ("since=x", "limit=5000", "status=abc", "status=0xZZZZ", "action=root"):
        add(f"audit ?{query}", http("GET", f"/v2/audit?{query}"))
    for query in (
        "quality=0",
        "quality=abc",
        "quality=101",
        "window=a,b",
        "window=40,0",
        "window=40,400,cubic",
        "viewport=0,0",
        "viewport=99999,1",
        "viewport=1,1,a,b,c,d",
    ):
        add(f"rendered ?{query}", http("GET", f"{INSTANCE}/rendered?{query}"))
    wado = f"/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}"
    for query in (
        "",
        "requestType=WADO",
        f"requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID=%00",
        f"requestType=wado&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}",
        wado.split("?")[1] + "&frameNumber=99999999999999999999",
        wado.split("?")[1] + "&rows=" + "9" * 5000,  # past what int() parses
        wado.split("?")[1] + "&frameNumber=%C2%B2",
        wado.split("?")[1] + "&rows=-1",
        wado.split("?")[1] + "&columns=1e9",
        wado.split("?")[1] + "&region=nan,nan,nan,nan",
        wado.split("?")[1] + "&region=0,0,inf,1",
        wado.split("?")[1] + "&windowCenter=inf&windowWidth=1",
        wado.split("?")[1] + "&imageQuality=abc",
        wado.split("?")[1] + "&contentType=" + "x" * 4000,
        wado.split("?")[1] + "&contentType=image/png;q=abc",
        wado.split("?")[1] + "&contentType=application/dicom&transferSyntax=1..2",
        wado.split("?")[1] + "&anonymize=maybe",
        wado.split("?")[1] + "&anonymize=yes&anonymize=yes",
    ):
        add(f"WADO-URI ?{query[-40:]}", http("GET", f"/wado?{query}"))
    for frames in ("0", "-1", "1,,2", "99999999999999999999", "abc", "1-3", "2"):
        add(f"frames {frames}", http("GET", f"{INSTANCE}/frames/{frames}"))
    for accept in (
        "application/xml",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4.5',
        "image/jpeg",
        "text/html, application/xhtml+xml",
        "x" * 4000,
        'multipart/related; type="application/octet-stream"; '
        "transfer-syntax=1.2.840.10008.1.2.4.50; q=2",
    ):
        add(f"Accept {accept[:40]}", http("GET", INSTANCE, {"Accept": accept}))
    for value in ("bytes=99999999-", "bytes=5-2", "bytes=abc", "bytes=-0", "bytes=0-1,5-6"):
        add(f"Range {value}", http("GET", f"{INSTANCE}/bulkdata/7FE00010", {"Range": value}))

    # Extended query tags
    for body in (
        b"{",
        b"[]",
        b'[{"path": "../x", "level": "Study"}]',
        b'[{"path": "PatientName", "level": "Galaxy"}]',
        b'[{"path": "00100010", "vr": "XX", "level": "Study"}]',
        b'"a string"',
        b"\xff\xfe",
        b"[" + b'{"path": "PatientWeight"},' * 5000 + b"{}]",
        b'{"path": ' * 10000,
    ):
        add(
            f"extended tags {body[:30]!r}",
            http("POST", "/v2/extendedquerytags", {"Content-Type": "application/json"}, body),
        )
    add(
        "PATCH tag with junk",
        http(
            "PATCH",
            "/v2/extendedquerytags/PatientWeight",
            {"Content-Type": "application/json"},
            b"[1,2",
        ),
    )

    # Abusive headers and broken HTTP
    add(
        "eleven audit headers",
        http("GET", "/v2/studies", {f"X-Dicomhub-Audit-H{i}": "x" for i in range(11)}),
    )
    add("a 3 KB audit header", http("GET", "/v2/studies", {"X-Dicomhub-Audit-Note": "x" * 3000}))
    add("method FOO", http("FOO", "/v2/studies"))
    add("PUT on studies", http("PUT", "/v2/studies", body=b"x"))
    add("header without a colon", http("GET", "/v2/studies", raw_headers=b"NoColonHere\r\n"))
    add("a 100 KB header", http("GET", "/v2/studies", {"X-Pad": "a" * 100_000}))
    add(
        "10,000 headers",
        http("GET", "/v2/studies", raw_headers=b"".join(b"X-H%d: 1\r\n" % i for i in range(10000))),
    )
    add("invalid request line", b"GARBAGE\r\n\r\n")
    add(
        "bad chunked encoding",
        b"POST /v2/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: "
        + MULTIPART.encode()
        + b"\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    add(
        "Content-Length and chunked",
        b"POST /v2/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    add(
        "negative Content-Length",
        b"POST /v2/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: -5\r\n\r\n",
    )
    add(
        "a body that stalls",
        http("POST", "/v2/studies", {"Content-Type": MULTIPART}, b"").replace(
            b"Content-Length: 0", b"Content-Length: 100000"
        )
        + parts(part10())[:500],
    )

    # Upsert (PUT) takes STOW's bodies: each hostile STOW request again as a PUT; and the
    # stored instance sent into another series and another study (an upsert never moves one)
    for case in list(cases):
        if case.request.startswith(b"POST /v2/studies"):
            cases.append(Case(f"PUT: {case.name}", b"PUT" + case.request[len(b"POST") :]))
    for series, study in ((uid(81, 9), STUDY), (uid(82, 1), uid(82))):
        moved = parts(instance(study, series, SOP, Rows=32, Columns=32))
        add(
            f"PUT moving the stored instance to {series}",
            http("PUT", "/v2/studies", {"Content-Type": MULTIPART}, moved),
        )
    return cases
