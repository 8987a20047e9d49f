"""GET /v{n}/api.json and /v{n}/api.yaml: the OpenAPI document of the routes."""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources

import yaml
from starlette.requests import Request
from starlette.responses import Response

from dicomhub import __version__
from dicomhub.web import changefeed
from dicomhub.web.common import version
from dicomhub.web.partitions import has_partitions


@cache
def document() -> dict:
    text = (resources.files("dicomhub.web") / "openapi.yaml").read_text()
    return yaml.safe_load(text)


def for_version(number: int) -> dict:
    doc = copy.deepcopy(document())
    doc["info"]["version"] = __version__
    doc["servers"] = [{"url": f"/v{number}"}]
    # Shared response tables are written once in the YAML and expanded here: OpenAPI 3.0
    # has no $ref for a whole responses object.
    shared = {k: doc["components"].pop(k) for k in list(doc["components"]) if k.startswith("x-")}
    for item in doc["paths"].values():
        for operation in item.values():
            ref = (
                operation.get("responses", {}).get("$ref", "")
                if isinstance(operation, dict)
                else ""
            )
            if ref:
                operation["responses"] = copy.deepcopy(shared[ref.rsplit("/", 1)[1]])
            ref = operation.get("parameters", {}) if isinstance(operation, dict) else {}
            if isinstance(ref, dict) and "$ref" in ref:
                operation["parameters"] = copy.deepcopy(shared[ref["$ref"].rsplit("/", 1)[1]])
    if number == 1:  # v1 pages the change feed by sequence, without the time window
        params = doc["paths"]["/changefeed"]["get"]["parameters"]
        doc["paths"]["/changefeed"]["get"]["parameters"] = [
            p for p in params if p.get("$ref", "").split("/")[-1] not in ("startTime", "endTime")
        ]
        _drop_parameter(doc, "original")  # v1 ignores msdicom-request-original
        del doc["paths"]["/studies/$bulkUpdate"]  # v2 only (v1 answers 404)
        del doc["components"]["schemas"]["BulkUpdateRequest"]
    _partitioned(doc)
    default, maximum = changefeed.LIMITS[number]
    doc["components"]["parameters"]["feedLimit"]["schema"].update(maximum=maximum, default=default)
    return doc


def _partitioned(doc: dict) -> None:
    """Each path of a data partition's routes (web/partitions) again under
    /partitions/{partition}: the same operations, in that partition."""
    ref = {"$ref": "#/components/parameters/partition"}
    for path, item in list(doc["paths"].items()):
        if has_partitions(path):
            copied = copy.deepcopy(item)
            copied["parameters"] = [ref, *copied.get("parameters", [])]
            doc["paths"]["/partitions/{partition}" + path] = copied


def _drop_parameter(doc: dict, name: str) -> None:
    """Remove the shared parameter ``name`` from every operation (and the components)."""
    ref = f"#/components/parameters/{name}"
    for item in doc["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and isinstance(operation.get("parameters"), list):
                kept = [p for p in operation["parameters"] if p.get("$ref") != ref]
                if kept:
                    operation["parameters"] = kept
                else:
                    del operation["parameters"]
    del doc["components"]["parameters"][name]


async def api_json(request: Request) -> Response:
    body = json.dumps(for_version(version(request)), indent=1)
    return Response(body, media_type="application/json")


async def api_yaml(request: Request) -> Response:
    body = yaml.safe_dump(for_version(version(request)), sort_keys=False)
    return Response(body, media_type="application/yaml")
