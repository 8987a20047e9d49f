"""The export request (Microsoft's shape, and dicomhub's extensions): what to export, where,
and whether to de-identify; checked against the operator's allow list before anything is queued.

The result is the job's payload: plain JSON, so a job resumed on another node needs nothing
but its row in the index. A query source is resolved when the request arrives (see
``study_query``): the payload lists the studies it matched then, so a resumed job exports
exactly those, and studies stored later are not added half-way.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qsl, urlparse

from dicomhub.dicom.deidentify import OPTION_NAMES, option_names, options_named
from dicomhub.dicom.levels import Level
from dicomhub.dicom.query import Query, parse_query
from dicomhub.dicom.search_keys import Key
from dicomhub.dicom.uids import require_uid
from dicomhub.errors import Forbidden, InvalidRequest

MAX_VALUES = 10_000  # identifiers in one request, and studies one query may match
MAX_QUERY_CHARS = 65_536
# QIDO controls that would pick some of the matches: an export takes all of them
PAGING = ("limit", "offset", "orderby")
BLOB_SCHEMES = ("file", "s3", "az", "gs")
ALLOW_SETTING = "export_allow (--export-allow, DICOMHUB_EXPORT_ALLOW)"
CREDENTIALS_SETTING = "export_request_credentials (DICOMHUB_EXPORT_REQUEST_CREDENTIALS)"
AZURE_HOST = ".blob.core.windows.net"


def parse(body: Any, allow: list[str], request_credentials: bool, project_key: bool) -> dict:
    """The payload of the export job ``body`` asks for; InvalidRequest names what is wrong
    with it, Forbidden a destination outside ``allow``. ``project_key``: de-identification
    takes the server's key (the same UIDs across exports), else one of the export's own."""
    fields = _fields(body, "the body")
    unknown = set(fields) - {"source", "sources", "destination", "deidentify"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise InvalidRequest(f"unknown field(s) in the export request: {names}")
    source = fields.get("sources", fields.get("source"))
    if source is None or "destination" not in fields:
        raise InvalidRequest('an export request needs "source" (or "sources") and "destination"')
    kind, what = _source(source)
    payload = {
        kind: what,
        "destination": destination(fields["destination"], allow, request_credentials),
        "deidentify": deidentify_options(fields.get("deidentify")),
    }
    if payload["deidentify"] is not None and not project_key:
        # One context per export, the same on whichever node resumes it (PS3.15 E: the same
        # original UID gives the same new one throughout the export). With a project key
        # (--deidentify-key-file) the server's key serves, and is never written in the job.
        payload["key"] = secrets.token_hex(32)
    return payload


def _source(source: Any) -> tuple[str, Any]:
    """("sources", identifiers) or ("query", its text): the payload's field for ``source``
    (a query is resolved into "sources" by the export service, against the index)."""
    fields = _fields(source, "source")
    kind = str(fields.get("type", "")).lower()
    if kind == "identifiers":
        return "sources", sources(source)
    if kind == "query":
        text = _fields(fields.get("settings"), "source settings").get("query")
        if not isinstance(text, str) or not text.strip("?& "):
            raise InvalidRequest(
                'a "query" source needs settings.query, a QIDO-RS study query string '
                '(e.g. "PatientID=P1&StudyDate=20200101-20201231")'
            )
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidRequest(f"settings.query is longer than {MAX_QUERY_CHARS} characters")
        return "query", text.lstrip("?")
    raise InvalidRequest('source "type" must be "identifiers" or "query"')


def study_query(text: str, extended: dict[str, Key]) -> Query:
    """The study-level QIDO-RS query (PS3.18 10.6.1) of a "query" source, parsed and checked
    as a search for studies is (``dicom.query``, the same matching rules and messages), with
    two differences: a parameter a search would ignore (with a Warning) is refused, since
    ignoring it would export more than was asked; and limit, offset and orderby are refused,
    since an export takes every match (at most MAX_VALUES studies)."""
    params = parse_qsl(text, keep_blank_values=True)
    paging = sorted({name for name, _ in params if name.lower() in PAGING})
    if paging:
        raise InvalidRequest(
            f"Invalid query parameter {paging[0]}: an export takes every matching study "
            f"(at most {MAX_VALUES}); limit, offset and orderby are not taken"
        )
    query = parse_query(params, Level.STUDY, max_limit=MAX_VALUES, strict=True, extended=extended)
    query.limit = MAX_VALUES
    return query


def sources(source: Any) -> list[list[str]]:
    """``{"type": "identifiers", "settings": {"values": ["study[/series[/instance]]"]}}``:
    each identifier as [study, series?, sop?], without repeats or identifiers inside another."""
    fields = _fields(source, "source")
    values = _fields(fields.get("settings"), "source settings").get("values")
    if not isinstance(values, list) or not values:
        raise InvalidRequest("source settings need a non-empty list of identifiers in values")
    if len(values) > MAX_VALUES:
        raise InvalidRequest(f"at most {MAX_VALUES} identifiers per export")
    parsed = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidRequest(f"identifier {value!r} is not a string")
        parts = value.strip("/").split("/")
        if len(parts) > 3:
            raise InvalidRequest(f"identifier {value[:200]!r}: expected study[/series[/instance]]")
        names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        parsed.append(tuple(require_uid(p, n) for p, n in zip(parts, names, strict=False)))
    given = set(parsed)
    out = []
    for ids in dict.fromkeys(parsed):  # in request order, once each
        if not any(ids[:n] in given for n in range(1, len(ids))):  # not inside another
            out.append(list(ids))
    return out


def destination(dest: Any, allow: list[str], request_credentials: bool) -> dict:
    """``{"url", "options", "href"}``: where the files go (a blob URL), the store's options
    (from the allow list entry, and the request's credentials when allowed), and the address
    clients see (errorHref)."""
    fields = _fields(dest, "destination")
    kind = str(fields.get("type", "")).lower()
    settings = _fields(fields.get("settings"), "destination settings")
    try:  # urlparse refuses some malformed URLs (a bad IPv6 host) with ValueError
        if kind == "blob":
            url = settings.get("url")
            if not isinstance(url, str) or not url:
                raise InvalidRequest('a "blob" destination needs settings.url (file://, s3://)')
            href, target, options = _blob(url), None, {}
        elif kind == "azureblob":
            href, target, options = _azure(settings, request_credentials)
        else:
            raise InvalidRequest('destination "type" must be "azureblob" or "blob"')
    except ValueError as exc:
        raise InvalidRequest(f"destination: {exc}") from None
    entry = allowed(href, allow)
    return {"url": target or href, "options": {**entry, **options}, "href": href}


def allowed(href: str, allow: list[str]) -> dict[str, str]:
    """The options of the longest allow-list entry ``href`` lies under; Forbidden if none."""
    best: tuple[int, dict] | None = None
    for entry in allow:
        parsed = urlparse(entry)
        base = f"{parsed.scheme}://{parsed.netloc}{parsed.path}".rstrip("/")
        if (href == base or href.startswith(base + "/")) and (best is None or len(base) > best[0]):
            best = (len(base), dict(parse_qsl(parsed.query)))
    if best is None:
        raise Forbidden(
            f"export destination {href} is not under any URL prefix of {ALLOW_SETTING}"
            + ("" if allow else "; no destination is allowed until the operator lists one")
        )
    return best[1]


def _blob(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in BLOB_SCHEMES or (parsed.scheme != "file" and not parsed.netloc):
        raise InvalidRequest(
            f"destination url {url[:200]!r}: expected file:///folder, s3://bucket/prefix, "
            "az://container/prefix or gs://bucket/prefix"
        )
    if parsed.query or parsed.fragment or parsed.params:
        raise InvalidRequest(
            "a destination url takes no query: the store's options come from " + ALLOW_SETTING
        )
    if "%" in parsed.path or ".." in parsed.path.split("/") or "\\" in parsed.path:
        # the store decodes %-escapes: %2e%2e would be a '..' that no check here saw
        raise InvalidRequest(f"destination url {url[:200]!r} may not contain '..' or '%'")
    if parsed.scheme == "file" and (parsed.netloc or not parsed.path.startswith("/")):
        raise InvalidRequest("a file destination is file:///absolute/folder")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}".rstrip("/")


def _azure(settings: dict, request_credentials: bool) -> tuple[str, str, dict]:
    """Microsoft's azureblob settings: blobContainerUri (a SAS in its query counts as a
    credential), or connectionString + blobContainerName; useManagedIdentity is accepted (the
    credentials then come from the environment, as they do anyway)."""
    uri, conn = settings.get("blobcontaineruri"), settings.get("connectionstring")
    options: dict[str, str] = {}
    if isinstance(uri, str) and uri:
        parsed = urlparse(uri)
        if parsed.query:
            options["sas_key"] = parsed.query
        base = f"{parsed.scheme}://{parsed.netloc}{parsed.path}".rstrip("/")
        parts = parsed.path.strip("/").split("/")
        if parsed.hostname and parsed.hostname.endswith(AZURE_HOST):
            account, path = parsed.hostname.split(".")[0], parts
            endpoint = None
        else:  # the emulator's and custom endpoints' form: host/account/container
            account, path = parts[0], parts[1:]
            endpoint = f"{parsed.scheme}://{parsed.netloc}/{account}"
    elif isinstance(conn, str) and conn:
        container = settings.get("blobcontainername")
        if not isinstance(container, str) or not container:
            raise InvalidRequest("an azureblob connectionString needs blobContainerName")
        pairs = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
        account = pairs.get("AccountName", "")
        if pairs.get("AccountKey"):
            options["account_key"] = pairs["AccountKey"]
        if pairs.get("SharedAccessSignature"):
            options["sas_key"] = pairs["SharedAccessSignature"]
        endpoint = pairs.get("BlobEndpoint", "").rstrip("/") or None
        if endpoint is None:
            if not account:
                raise InvalidRequest("the connectionString names no AccountName or BlobEndpoint")
            protocol = pairs.get("DefaultEndpointsProtocol", "https")
            suffix = pairs.get("EndpointSuffix", "core.windows.net")
            base = f"{protocol}://{account}.blob.{suffix}/{container}"
        else:
            base = f"{endpoint}/{container}"
            account = account or urlparse(endpoint).path.strip("/")
        parsed = urlparse(base)
        path = [container]
        if (parsed.hostname or "").endswith(AZURE_HOST):
            endpoint = None
    else:
        raise InvalidRequest("azureblob settings need blobContainerUri, or connectionString")
    if options and not request_credentials:
        raise Forbidden(
            "credentials in an export request (a SAS or an AccountKey) are refused unless "
            f"{CREDENTIALS_SETTING} is on; give the server its credentials in its environment"
        )
    if (
        not account
        or not path
        or not path[0]
        or ".." in path
        or parsed.scheme
        not in (
            "http",
            "https",
        )
    ):
        raise InvalidRequest(f"azureblob container {base[:200]!r} is not a container URL")
    options["account_name"] = account
    if endpoint is not None:
        options["endpoint"] = endpoint
        if parsed.scheme == "http":
            options["allow_http"] = "true"
    return base, "az://" + "/".join(path), options


def deidentify_options(value: Any) -> dict | None:
    """``{"options": [...]}`` (names in ``deidentify.OPTION_NAMES``) -> Options keywords."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    fields = _fields(value, "deidentify")
    names = fields.get("options", [])
    if set(fields) - {"options"} or not isinstance(names, list):
        raise InvalidRequest('deidentify is {"options": [...]} (or true)')
    if not all(isinstance(name, str) for name in names):
        raise InvalidRequest("de-identification options are names (strings)")
    chosen = options_named(",".join(names))  # the names downloads take, checked alike
    return {field: True for name, field in OPTION_NAMES.items() if name in option_names(chosen)}


def _fields(value: Any, what: str) -> dict[str, Any]:
    """A JSON object's fields, names lower-cased (Microsoft's .NET binding ignores case)."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return {str(k).lower(): v for k, v in value.items()}
