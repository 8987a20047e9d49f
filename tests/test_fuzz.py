"""Schemathesis against `dicomhub serve` over a real socket: every operation of the served
OpenAPI documents (/v2/api.json, and /v1/api.json with fewer examples), valid and invalid
inputs (schemathesis's positive and negative modes; its examples, coverage and fuzzing
phases), every check (no 5xx, no dropped connection, status codes, content types and bodies
as the document says, invalid data refused, valid data accepted). Bounded and derandomised:
the same cases every run. Each failure it ever found is a regression test in
test_fuzz_corpus.py. A failure prints the curl command that reproduces it.

The server holds a few stored instances; most cases of an operation with study/series/sop in
its path are sent with their UIDs (and frame 1), so the retrieval routes answer 200, not only
404 (test_fuzz_reached_the_stored_instances checks it). Destructive operations run too, on
this server's own data folder: DELETE of a study, series or instance with generated UIDs only
(with the stored ones, what ran after them would depend on the order of the cases),
$purge, extended query tags (added, changed, removed: nothing else depends on them here) and
export (refused: no destination is allowed).
"""

from __future__ import annotations

import zlib

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.transport import register_serializer
from schemathesis.transport.serialization import serialize_binary

from dicomhub.web.openapi import for_version
from dicomhub.web.partitions import has_partitions
from tests.conftest import running_server
from tests.dicomfiles import storable_files
from tests.helpers import MULTIPART, multipart

# Operations where a request the document calls valid may still get a 400: its validity depends
# on what OpenAPI cannot state. For these the check that valid data is accepted is off (every
# other check runs).
SEARCH = (
    "/studies",
    "/series",
    "/instances",
    "/studies/{study}/series",
    "/studies/{study}/instances",
    "/studies/{study}/series/{series}/instances",
)
RENDERED = (
    "/studies/{study}",
    "/studies/{study}/series/{series}",
    "/studies/{study}/series/{series}/instances/{sop}",
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
)
DEPENDENT = {
    # matching keys, values and orderby/includefield names: the DICOM dictionary and the level
    **{f"GET {p}{c}": "QIDO keys" for p in SEARCH for c in ("", "/count")},
    # a viewport region must overlap the image
    **{f"GET {p}/{k}": "viewport region" for p in RENDERED for k in ("rendered", "thumbnail")},
    "GET /wado": "WADO-URI parameters that go together (windowCenter with windowWidth, ...)",
    "GET /changefeed": "endTime must be after startTime",
    "POST /export": "destinations must be allowed by the server's settings",
    "POST /extendedquerytags": "tag paths name DICOM attributes",
    "POST /studies/$bulkUpdate": "only section 12's attributes may change, with their VRs",
    "GET /events": "event types and filter values (comma-separated lists of known ones)",
    # a webhook URL's host must resolve, to a public address (no --webhook-allow-private)
    "POST /subscriptions": "webhook URLs must resolve to public addresses",
    "PATCH /subscriptions/{id}": "webhook URLs must resolve to public addresses",
    # a workitem dataset must meet Table CC.2.5-3, a state change the workitem's state
    **{
        f"{m} {p}": "workitem datasets and states"
        for m, p in (
            ("POST", "/workitems"),
            ("GET", "/workitems"),
            ("POST", "/workitems/{workitem}"),
            ("PUT", "/workitems/{workitem}/state"),
            ("POST", "/workitems/{workitem}/cancelrequest"),
            # the subscriber's AE title (ASCII, not all spaces) and the workitem must exist
            ("POST", "/workitems/{workitem}/subscribers/{aetitle}"),
            ("DELETE", "/workitems/{workitem}/subscribers/{aetitle}"),
            ("POST", "/workitems/{workitem}/subscribers/{aetitle}/suspend"),
            ("GET", "/subscribers/{aetitle}"),  # a WebSocket: plain HTTP gets 426
        )
    },
}
# ... and the same operations in a data partition
DEPENDENT |= {
    f"{method} /partitions/{{partition}}{path}": why
    for method, path, why in ((*k.split(" ", 1), v) for k, v in list(DEPENDENT.items()))
    if has_partitions(path)
}
STORED = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_2frame.dcm")
PARTITION = "fuzz.partition-1"  # the data partition the stored files are in too
MAX_EXAMPLES = 80  # an operation, of /v2
V1_EXAMPLES = 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server, with STORED in it: (base URL, [(study, series, sop)])."""
    files = [f for f in storable_files() if f.name in STORED]
    # no webhook deliveries: a generated subscription may name a real host on the Internet
    folder = tmp_path_factory.mktemp("fuzz")
    # and live event streams that end at once (each case would wait for its end)
    settings = dict(
        delete_delay="0",
        webhook_concurrency="0",
        event_stream_seconds="0.2",
        data_partitions="true",
    )
    with running_server(folder, **settings) as (url, _):
        body = multipart(*(f.data for f in files))
        for root in ("/v2", f"/v2/partitions/{PARTITION}"):  # the default partition and one more
            r = httpx.post(
                url + root + "/studies", content=body, headers={"Content-Type": MULTIPART}
            )
            assert r.status_code == 200, r.text
        yield url, [(f.study, f.series, f.sop) for f in files]


def _multipart_related(ctx, value) -> dict:
    """A STOW body's generated bytes as the one part of a multipart/related body."""
    return {"data": multipart(serialize_binary(value)), "headers": {"Content-Type": MULTIPART}}


register_serializer(_multipart_related, "multipart/related")
schemathesis.serializer.alias("application/dicom", "application/octet-stream")


def _schema(version: int, examples: int):
    """The document the server serves at /v{version}/api.json (test_openapi checks they are
    the same)."""
    schema = schemathesis.openapi.from_dict(for_version(version))
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=examples,
        deterministic=True,
        database="none",
    )
    # A body over the server's limit is refused with 413 (documented), whatever else is wrong
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return schema


def _bounded(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@_schema(2, MAX_EXAMPLES).parametrize()
@_bounded(MAX_EXAMPLES)
def test_fuzz(case, served):
    _call(case, served, 2)


# /v1 shares the handlers; what differs is its change feed (by sequence) and its STOW rules
@_schema(1, V1_EXAMPLES).parametrize()
@_bounded(V1_EXAMPLES)
def test_fuzz_v1(case, served):
    _call(case, served, 1)


def _call(case, served, version: int) -> None:
    url, stored = served
    _with_stored_uids(case, stored)
    _deidentify_as_zip(case)
    dependent = case.operation.label in DEPENDENT
    # /metrics has a server of its own: it is not versioned
    unversioned = "servers" in for_version(version)["paths"][case.operation.path]
    response = case.call_and_validate(
        base_url=url if unversioned else f"{url}/v{version}",
        timeout=30,
        excluded_checks=[positive_data_acceptance] if dependent else None,
    )
    REACHED.setdefault(f"v{version} {case.operation.label}", set()).add(response.status_code)


REACHED: dict[str, set[int]] = {}  # "v2 GET /studies": the statuses the runs got


def test_fuzz_reached_the_stored_instances():
    """The run retrieved what is stored (not only 404s): every GET of an instance answered 200
    at least once; so did the admin routes (no authentication on loopback)."""
    if not REACHED:
        pytest.skip("checks what test_fuzz reached: run with it")
    instance = "/studies/{study}/series/{series}/instances/{sop}"
    for path in ("", "/metadata", "/rendered", "/thumbnail", "/frames/{frames}"):
        assert 200 in REACHED[f"v2 GET {instance}{path}"], path
        assert 200 in REACHED[f"v2 GET /partitions/{{partition}}{instance}{path}"], path
    assert 200 in REACHED["v2 GET /partitions"]
    assert 200 in REACHED["v2 GET /audit"] and 200 in REACHED["v2 POST /deleted/$purge"]


def _with_stored_uids(case, stored) -> None:
    """Send most cases of a non-destructive operation with path UIDs of a stored instance,
    and every valid one of a partition's route to the partition that holds them (another name
    is one that does not exist: 400)."""
    path = case.path_parameters
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        return  # the invalid path value is what this case tests
    if path and "partition" in path:
        path["partition"] = PARTITION
    if not path or "study" not in path or case.method.upper() == "DELETE":
        return
    pick = zlib.crc32(repr((case.query, case.headers, path)).encode()) % (len(stored) + 1)
    if pick == len(stored):  # one in len(stored) + 1 keeps its generated UIDs
        return
    study, series, sop = stored[pick]
    path["study"] = study
    if "series" in path:
        path["series"] = series
    if "sop" in path:
        path["sop"] = sop
    if "frames" in path:
        path["frames"] = "1"


def _deidentify_as_zip(case) -> None:
    """deidentify=true applies to a ZIP download only, and deidentifyOptions only with it: a
    dependency between parameters OpenAPI 3.0 cannot state, so valid cases are made to keep it."""
    query = case.query
    if not query or case.meta is None or case.meta.is_negative_at(ParameterLocation.QUERY):
        return
    if str(query.get("deidentify")).lower() == "true":
        case.headers = {**(case.headers or {}), "Accept": "application/zip"}
    else:
        query.pop("deidentifyOptions", None)
