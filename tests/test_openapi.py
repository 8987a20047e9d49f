"""The OpenAPI document: valid OpenAPI 3.0 (openapi-spec-validator), served as JSON and YAML,
and saying what the code enforces (patterns, bounds). test_service checks that it documents
every route; test_fuzz runs schemathesis against a real server with it."""

from __future__ import annotations

import re

import pytest
import yaml
from openapi_spec_validator import OpenAPIV30SpecValidator

from dicomhub.archive.retrieve import FRAME_LIST
from dicomhub.dicom import uids
from dicomhub.web import changefeed, extended_tags
from dicomhub.web.common import MAX_OFFSET
from dicomhub.web.openapi import for_version
from tests.dicomfiles import storable_files
from tests.helpers import stow


@pytest.mark.parametrize("version", [1, 2])
def test_served_document_is_valid_openapi(client, version):
    for doc in (
        client.get(f"/v{version}/api.json").json(),
        yaml.safe_load(client.get(f"/v{version}/api.yaml").text),
    ):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in OpenAPIV30SpecValidator(doc).iter_errors()
        ]
        assert errors == []
        assert doc == for_version(version) | {"info": doc["info"]}


def _schemas(version: int) -> dict:
    return for_version(version)["components"]["schemas"]


def _anchored(pattern: str) -> re.Pattern:
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return re.compile(pattern[1:-1])


def test_uid_and_frame_patterns_are_the_codes():
    schemas = _schemas(2)
    assert _anchored(schemas["UID"]["pattern"]).pattern == uids._UID.pattern
    assert schemas["UID"]["maxLength"] == uids.MAX_UID_LENGTH
    assert _anchored(schemas["FrameList"]["pattern"]).pattern == FRAME_LIST.pattern


def test_every_uid_parameter_has_the_uid_schema():
    doc = for_version(2)
    params = [p for p in doc["components"]["parameters"].values()]
    for item in doc["paths"].values():
        for operation in item.values():
            params += operation.get("parameters", []) if isinstance(operation, dict) else []
        params += item.get("parameters", [])
    named = {
        "study",
        "series",
        "sop",
        "studyUID",
        "seriesUID",
        "objectUID",
        "workitem",
        "transaction",
    }
    uid_params = [p for p in params if p.get("name") in named]
    assert len(uid_params) >= 7  # study, series, sop; WADO-URI's three; the audit's study
    for p in uid_params:
        assert p["schema"] == {"$ref": "#/components/schemas/UID"}, p


@pytest.mark.parametrize("version", [1, 2])
def test_paging_bounds_are_the_codes(version):
    doc = for_version(version)
    params = doc["components"]["parameters"]
    default, maximum = changefeed.LIMITS[version]
    assert params["feedLimit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": maximum,
        "default": default,
    }
    assert params["limit"]["schema"]["maximum"] == extended_tags.LIMITS[1]
    assert params["offset"]["schema"]["maximum"] == MAX_OFFSET
    audit = {p["name"]: p["schema"] for p in doc["paths"]["/audit"]["get"]["parameters"]}
    assert audit["offset"]["maximum"] == MAX_OFFSET and audit["limit"]["maximum"] == 1000
    search = {p["name"]: p["schema"] for p in doc["paths"]["/studies"]["get"]["parameters"]}
    assert search["limit"]["maximum"] == search["offset"]["maximum"] == 2**31 - 1


def test_rendering_parameter_patterns(client):
    """What the window and viewport patterns allow, the server takes; what they refuse, it
    refuses (400)."""
    params = for_version(2)["components"]["parameters"]
    window = re.compile(params["window"]["schema"]["pattern"])
    viewport = re.compile(params["viewport"]["schema"]["pattern"])
    f = next(f for f in storable_files() if f.name == "MR_small.dcm")
    assert stow(client, f.data).status_code == 200
    url = f"/v2/studies/{f.study}/series/{f.series}/instances/{f.sop}/rendered"
    for name, pattern, good, bad in (
        ("window", window, ["40,400", "-5.5,1.0,sigmoid", "0,1,linear-exact"], ["40", "1,0"]),
        (
            "viewport",
            viewport,
            ["1,1", "8192,8192", "8189,8100", "64,64,20,0,-10,10"],
            ["0,1", "8193,1"],
        ),
    ):
        for value in good:
            assert pattern.match(value), value
            assert client.get(url, params={name: value}).status_code == 200, value
        for value in bad:
            assert not pattern.match(value), value
            assert client.get(url, params={name: value}).status_code == 400, value


def test_upsert_and_original_header_are_documented():
    """PUT (upsert) on both versions; msdicom-request-original on v2's retrieve and metadata
    only (v1 ignores it, web/common.retrieve_scope)."""
    retrieve_and_metadata = [
        "/studies/{study}",
        "/studies/{study}/metadata",
        "/studies/{study}/series/{series}",
        "/studies/{study}/series/{series}/metadata",
        "/studies/{study}/series/{series}/instances/{sop}",
        "/studies/{study}/series/{series}/instances/{sop}/metadata",
    ]
    for number in (1, 2):
        doc = for_version(number)
        assert {"put", "post"} <= set(doc["paths"]["/studies"])
        assert {"put", "post"} <= set(doc["paths"]["/studies/{study}"])
        having = sorted(
            path
            for path, item in doc["paths"].items()
            for method, operation in item.items()
            if method in ("get", "put", "post", "delete")
            and {"$ref": "#/components/parameters/original"} in operation.get("parameters", [])
        )
        within = [f"/partitions/{{partition}}{p}" for p in retrieve_and_metadata]
        assert having == (sorted(retrieve_and_metadata + within) if number == 2 else [])
    header = for_version(2)["components"]["parameters"]["original"]
    assert header["name"] == "msdicom-request-original" and header["in"] == "header"
