"""The workloads: each sends the same requests to every server, times them, then verifies every
answer against the data set (UIDs, counts, bytes). A workload returns one result per measured
case: ``{"id", "label", "metric", "better", **timing summary}``."""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import random
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pydicom

from bench import dataset as ds
from bench import native
from bench.client import Client, Request, Response, check, multipart, parts

EXPLICIT_LE = "1.2.840.10008.1.2.1"
DICOM_JSON = {"Accept": "application/dicom+json"}
STOW_CASES = [(1, 1), (1, 20), (4, 1), (4, 20)]  # (clients, instances per request)
LOAD = (4, 20)  # how setup data is sent: 4 clients, 20 instances per request
NATIVE_CASES = 10  # the STOW cases sent with curl store studies of groups 10 further on


@dataclass(frozen=True)
class Profile:
    image_size: int = 512  # STOW and reference-study images (512 KB, CT-like)
    stow_instances: int = 400  # per STOW case
    stow_small_instances: int = 2000  # small images sent one per request
    stow_small_size: int = 64
    reference_series: int = 500  # instances in the reference study's long series
    frames: int = 1000  # frames of the multi-frame instance
    frame_size: int = 256  # rows = columns of each frame (and of the single-frame instance)
    search_instances: int = 100_000  # small images loaded for search volume
    small_size: int = 32  # rows = columns of the small images
    repeat: int = 30  # requests per QIDO query kind
    frame_repeat: int = 100  # requests per frame case
    metadata_repeat: int = 5
    retrieve_repeat: int = 3
    native_repeat: int = 10  # whole-study transfers timed with curl (bodies not kept)
    convert_repeat: int = 40  # instances transcoded, frames rendered


PROFILES = {
    "default": Profile(),
    "smoke": Profile(
        image_size=64,
        stow_instances=40,
        stow_small_instances=40,
        stow_small_size=16,
        reference_series=12,
        frames=20,
        frame_size=32,
        search_instances=200,
        small_size=8,
        repeat=3,
        frame_repeat=3,
        metadata_repeat=2,
        retrieve_repeat=1,
        native_repeat=2,
        convert_repeat=3,
    ),
}


class Data:
    """The data set of one run, generated once and sent to every server."""

    def __init__(self, profile: Profile):
        self.p = profile
        self.stored: list[ds.Study] = []  # what the server under test holds; reset per server

    @cached_property
    def reference(self) -> ds.Study:
        return ds.study(ds.GROUPS["reference"], 1, (self.p.reference_series, 10))

    @cached_property
    def reference_files(self) -> dict[str, bytes]:
        return dict(ds.instances(self.reference, self.p.image_size))

    @cached_property
    def frames_study(self) -> ds.Study:
        """Series 1: the multi-frame instance; series 2: one single-frame instance of the same
        frame size."""
        return ds.study(ds.GROUPS["frames"], 1, (1, 1))

    @cached_property
    def frames_files(self) -> dict[str, bytes]:
        multi, single = self.frames_study.series
        return {
            f"{multi.uid}.1": ds.instance(
                self.frames_study, multi, 1, self.p.frame_size, self.p.frames
            ),
            f"{single.uid}.1": ds.instance(self.frames_study, single, 1, self.p.frame_size),
        }

    def stow_studies(self, case: int, instances: int | None = None) -> list[ds.Study]:
        per_study = 40
        return [
            ds.study(ds.GROUPS["stow"] + case, i, (20, 20))
            for i in range(max(1, (instances or self.p.stow_instances) // per_study))
        ]

    @cached_property
    def search_studies(self) -> list[ds.Study]:
        return [
            ds.study(ds.GROUPS["search"], i, (5, 5))
            for i in range(max(1, self.p.search_instances // 10))
        ]

    @cached_property
    def search_files(self) -> list[tuple[str, bytes]]:
        return [f for st in self.search_studies for f in ds.instances(st, self.p.small_size)]


def _result(id_: str, label: str, metric: str, better: str, summary: dict) -> dict:
    return {"id": id_, "label": label, "metric": metric, "better": better, **summary}


def _json(response: Response, what: str) -> Any:
    check(response.status == 200, lambda: f"{what}: HTTP {response.status} {response.body[:300]!r}")
    return json.loads(response.body) if response.body else []


def _values(items: list, tag: str) -> list[str]:
    return [item[tag]["Value"][0] for item in items]


def send_instances(
    client: Client,
    files: list[tuple[str, bytes]],
    clients: int,
    per_request: int,
    curl: bool = False,
):
    """STOW ``files`` ((SOP Instance UID, bytes)) in requests of ``per_request`` from ``clients``
    connections, with the Python client or with curl; every answer must list exactly the sent
    instances."""
    requests = [
        multipart([body for _, body in files[i : i + per_request]])
        for i in range(0, len(files), per_request)
    ]
    if curl:
        timing, responses = native.send(client, requests, clients, client.cpu)
    else:
        timing, responses = client.run(requests, clients)
    for i, response in enumerate(responses):
        answer = _json(response, "STOW")
        answer = answer if isinstance(answer, dict) else {}
        failed = answer.get("00081198", {}).get("Value")
        check(not failed, lambda f=failed: f"STOW failures: {f}")
        stored = _values(answer.get("00081199", {}).get("Value", []), "00081155")
        sent = [uid for uid, _ in files[i * per_request : (i + 1) * per_request]]
        check(sorted(stored) == sorted(sent), "STOW answer does not list the sent instances")
    return timing


def load(client: Client, data: Data) -> list[dict]:
    """Set-up data: the reference and frames studies, then the small images for search volume
    (the last reported as an ingest rate of small instances)."""
    send_instances(client, list(data.reference_files.items()), *LOAD)
    multi, single = data.frames_files.items()
    send_instances(client, [multi], 1, 1)
    send_instances(client, [single], 1, 1)
    count = len(data.search_files)
    timing = send_instances(client, data.search_files, 4, 50)
    del data.search_files  # the client's own memory must not slow the reads measured next
    data.stored += [data.reference, data.frames_study, *data.search_studies]
    summary = timing.summary("instances")
    return [
        _result(
            "ingest-small",
            f"STOW {count:,} small instances "
            f"({data.p.small_size}x{data.p.small_size}), 4 clients x 50 per request",
            "instances_per_s",
            "higher",
            summary,
        )
    ]


def stow(client: Client, data: Data) -> list[dict]:
    """Each STOW case sent with the Python client, then (when curl is installed) with curl, each
    time as instances of their own studies."""
    senders = [False] + ([True] if native.curl_available() is None else [])
    small = data.p.stow_small_size
    cases = [  # (id, label, clients, instances per request, image size, instances)
        *(
            (f"stow-{c}x{n}", f"{c} client(s), {n} per request", c, n, data.p.image_size, None)
            for c, n in STOW_CASES
        ),
        (  # small images, one per request, as a modality sends them
            "stow-small-4x1",
            f"small instances ({small}x{small}), 4 clients, 1 per request",
            4,
            1,
            small,
            data.p.stow_small_instances,
        ),
    ]
    out = []
    for case, (id_, label, clients, per_request, size, count) in enumerate(cases):
        for curl in senders:
            studies = data.stow_studies(case + NATIVE_CASES * curl, count)
            files = [f for st in studies for f in ds.instances(st, size)]
            timing = send_instances(client, files, clients, per_request, curl)
            data.stored += studies
            size_kb = sum(len(b) for _, b in files) / len(files) / 1024
            what = f"{len(files):,} x {size_kb:.0f} KB, " if count is None else f"{len(files):,} "
            out.append(
                _result(
                    id_ + ("-native" if curl else ""),
                    f"STOW {what}{label}" + (", curl" if curl else ""),
                    "instances_per_s",
                    "higher",
                    timing.summary("instances"),
                )
            )
    return out


def _study_queries(data: Data) -> list[tuple[str, str, list[tuple[str, frozenset[str]]]]]:
    """(id, label, [(query string, expected StudyInstanceUIDs)]) per kind of study search."""
    rng = random.Random(7)
    catalogue = data.stored
    picks = [rng.choice(data.search_studies) for _ in range(data.p.repeat)]

    def matching(pred) -> frozenset[str]:
        return frozenset(st.uid for st in catalogue if pred(st))

    kinds = []
    cases = [
        (f"PatientID={st.patient_id}", matching(lambda s, p=st.patient_id: s.patient_id == p))
        for st in picks
    ]
    kinds.append(("qido-patient-id", "study search by PatientID", cases))
    cases = []
    for st in picks:
        prefix = st.patient_name[:3]
        cases.append(
            (f"PatientName={prefix}*", matching(lambda s, p=prefix: s.patient_name.startswith(p)))
        )
    kinds.append(("qido-patient-name", "study search by PatientName prefix wildcard", cases))
    cases = []
    for st in picks:
        month = st.date[:6]
        last = calendar.monthrange(int(month[:4]), int(month[4:]))[1]
        cases.append(
            (
                f"StudyDate={month}01-{month}{last}",
                matching(lambda s, m=month: s.date.startswith(m)),
            )
        )
    kinds.append(("qido-study-date", "study search by StudyDate range (one month)", cases))
    modalities = sorted({m for types in ds.STUDY_TYPES for m in types[0]})
    cases = []
    for i in range(data.p.repeat):
        modality = modalities[i % len(modalities)]
        cases.append(
            (f"ModalitiesInStudy={modality}", matching(lambda s, m=modality: m in s.modalities))
        )
    kinds.append(("qido-modality", "study search by ModalitiesInStudy", cases))
    return kinds


def qido(client: Client, data: Data) -> list[dict]:
    out = []
    instances = sum(st.instance_count for st in data.stored)
    for id_, label, cases in _study_queries(data):
        requests = [Request("GET", f"/studies?{q}&limit=100", DICOM_JSON) for q, _ in cases]
        timing, responses = client.run(requests)
        for (query, expected), response in zip(cases, responses, strict=True):
            found = _values(_json(response, query), "0020000D")
            check(len(found) == len(set(found)), f"{query}: duplicate studies")
            check(
                len(found) == min(100, len(expected)),
                lambda q=query, f=found, e=expected: (
                    f"{q}: {len(f)} studies, want {min(100, len(e))}"
                ),
            )
            check(set(found) <= expected, f"{query}: studies that do not match")
        out.append(
            _result(
                id_,
                f"{label}, limit 100, {instances:,} instances",
                "p95_ms",
                "lower",
                timing.summary("queries"),
            )
        )
    rng = random.Random(8)
    picks = [rng.choice(data.search_studies) for _ in range(data.p.repeat)]
    requests = [Request("GET", f"/studies/{st.uid}/series", DICOM_JSON) for st in picks]
    timing, responses = client.run(requests)
    for st, response in zip(picks, responses, strict=True):
        found = _values(_json(response, "series"), "0020000E")
        check(sorted(found) == sorted(s.uid for s in st.series), f"series of {st.uid}")
    out.append(
        _result("qido-series", "series of a study", "p95_ms", "lower", timing.summary("queries"))
    )
    requests = [
        Request("GET", f"/studies/{st.uid}/series/{st.series[0].uid}/instances", DICOM_JSON)
        for st in picks
    ]
    timing, responses = client.run(requests)
    for st, response in zip(picks, responses, strict=True):
        found = _values(_json(response, "instances"), "00080018")
        check(sorted(found) == sorted(st.sop_uids(st.series[0])), f"instances of {st.uid}")
    out.append(
        _result(
            "qido-instances", "instances of a series", "p95_ms", "lower", timing.summary("queries")
        )
    )
    return out


def metadata(client: Client, data: Data) -> list[dict]:
    ref = data.reference
    series = ref.series[0]
    out = []
    for id_, path, expected in [
        (
            "metadata-series",
            f"/studies/{ref.uid}/series/{series.uid}/metadata",
            ref.sop_uids(series),
        ),
        (
            "metadata-study",
            f"/studies/{ref.uid}/metadata",
            [uid for s in ref.series for uid in ref.sop_uids(s)],
        ),
    ]:
        requests = [Request("GET", path, DICOM_JSON)] * data.p.metadata_repeat
        timing, responses = client.run(requests)
        for response in responses:
            found = _values(_json(response, path), "00080018")
            check(sorted(found) == sorted(expected), f"{path}: wrong instances")
        level = id_.split("-")[1]
        out.append(
            _result(
                id_,
                f"{level} metadata, {len(expected)} instances",
                "p50_ms",
                "lower",
                timing.summary("requests"),
            )
        )
    return out


def frames(client: Client, data: Data) -> list[dict]:
    st = data.frames_study
    multi, single = st.series
    accept = {
        "Accept": f'multipart/related; type="application/octet-stream"; '
        f"transfer-syntax={EXPLICIT_LE}"
    }
    rng = random.Random(9)
    size = data.p.frame_size
    cases = [
        (
            "frame-multi",
            f"a frame of the {data.p.frames}-frame instance ({size}x{size})",
            f"/studies/{st.uid}/series/{multi.uid}/instances/{multi.uid}.1/frames",
            [rng.randint(1, data.p.frames) for _ in range(data.p.frame_repeat)],
            lambda n: ds.frame_bytes(size, n),
        ),
        (
            "frame-single",
            f"the frame of a single-frame instance ({size}x{size})",
            f"/studies/{st.uid}/series/{single.uid}/instances/{single.uid}.1/frames",
            [1] * data.p.frame_repeat,
            lambda n: ds.ct_slice(size, 1),
        ),
    ]
    out = []
    for id_, label, path, numbers, expected in cases:
        requests = [Request("GET", f"{path}/{n}", accept) for n in numbers]
        timing, responses = client.run(requests)
        for n, response in zip(numbers, responses, strict=True):
            check(response.status == 200, f"{path}/{n}: HTTP {response.status}")
            check(parts(response) == [expected(n)], f"{path}/{n}: wrong pixels")
        out.append(_result(id_, label, "p50_ms", "lower", timing.summary("frames")))
    return out


def _digests(bodies) -> Counter:
    return Counter(hashlib.sha1(b).hexdigest() for b in bodies)


def study_request(data: Data) -> Request:
    """The whole reference study, as stored: what both clients and the loopback ceiling fetch."""
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    return Request("GET", f"/studies/{data.reference.uid}", accept)


def _per_mb(summary: dict, megabytes: float) -> dict:
    """The server's CPU per MB sent, beside its CPU per study."""
    per_study = summary.get("server_cpu_ms_per_unit")
    per_mb = None if per_study is None else round(per_study / megabytes, 3)
    return {**summary, "server_cpu_ms_per_mb": per_mb}


def retrieve(client: Client, data: Data) -> list[dict]:
    """The reference study, whole: with the Python client, then with curl (a native client)
    when it is installed. Every part of one answer per client must be a stored file (SHA-1);
    curl's timed answers must have that answer's size."""
    request = study_request(data)
    expected = _digests(data.reference_files.values())
    megabytes = sum(len(b) for b in data.reference_files.values()) / 1e6
    label = f"whole-study WADO-RS, {len(expected)} instances, {megabytes:.0f} MB"
    timing, responses = client.run([request] * data.p.retrieve_repeat)
    for response in responses:
        check(response.status == 200, f"study retrieval: HTTP {response.status}")
        check(_digests(parts(response)) == expected, "study retrieval: instances differ")
    out = [
        _result(
            "retrieve-study",
            f"{label}, Python client",
            "mb_per_s",
            "higher",
            _per_mb(timing.summary("studies"), megabytes),
        )
    ]
    if native.curl_available() is None:
        timing, first = native.fetch(client, request, data.p.native_repeat, client.cpu)
        check(first.status == 200, f"study retrieval (curl): HTTP {first.status}")
        check(_digests(parts(first)) == expected, "study retrieval (curl): instances differ")
        out.append(
            _result(
                "retrieve-study-native",
                f"{label}, curl",
                "mb_per_s",
                "higher",
                _per_mb(timing.summary("studies"), megabytes),
            )
        )
    return out


JPEG_LS = "1.2.840.10008.1.2.4.80"


def convert(client: Client, data: Data) -> list[dict]:
    """Conversion on retrieve: instances of the reference series transcoded to JPEG-LS lossless
    (each checked pixel for pixel), frames of the multi-frame instance rendered as JPEG."""
    ref = data.reference.series[0]
    count = min(data.p.convert_repeat, ref.instances)
    numbers = list(range(1, count + 1))
    accept = {"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}'}
    base = f"/studies/{data.reference.uid}/series/{ref.uid}/instances/{ref.uid}"
    requests = [Request("GET", f"{base}.{n}", accept) for n in numbers]
    timing, responses = client.run(requests)
    for n, response in zip(numbers, responses, strict=True):
        check(response.status == 200, f"JPEG-LS instance {n}: HTTP {response.status}")
        [body] = parts(response)
        converted = pydicom.dcmread(io.BytesIO(body))
        original = pydicom.dcmread(io.BytesIO(data.reference_files[f"{ref.uid}.{n}"]))
        check(converted.file_meta.TransferSyntaxUID == JPEG_LS, "not JPEG-LS")
        check((converted.pixel_array == original.pixel_array).all(), f"instance {n}: wrong pixels")
    out = [
        _result(
            "convert-jpegls",
            f"an instance ({data.p.image_size} KB) transcoded to JPEG-LS lossless",
            "p50_ms",
            "lower",
            timing.summary("instances"),
        )
    ]
    st = data.frames_study
    multi = st.series[0]
    path = f"/studies/{st.uid}/series/{multi.uid}/instances/{multi.uid}.1/frames"
    rng = random.Random(11)
    frames = [rng.randint(1, data.p.frames) for _ in range(count)]
    jpeg = {"Accept": "image/jpeg"}
    timing, responses = client.run([Request("GET", f"{path}/{n}/rendered", jpeg) for n in frames])
    for n, response in zip(frames, responses, strict=True):
        check(response.status == 200, f"rendered frame {n}: HTTP {response.status}")
        check(response.body[:2] == b"\xff\xd8", f"rendered frame {n}: not a JPEG")
    size = data.p.frame_size
    out.append(
        _result(
            "render-frame",
            f"a frame of the {data.p.frames}-frame instance ({size}x{size}) rendered as JPEG",
            "p50_ms",
            "lower",
            timing.summary("frames"),
        )
    )
    return out


WORKLOADS = [load, stow, qido, metadata, frames, retrieve, convert]
