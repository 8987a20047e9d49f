"""The parts of the settings each layer is handed (settings.py builds them from its flat fields).

``Settings`` stays the one flat object the flags, the ``DICOMHUB_*`` variables and the README
table describe; the composition root gives each service only its group. The groups hold values,
not defaults: every default lives in settings.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ingest:
    """What STOW-RS and C-STORE accept, and how an instance is indexed."""

    max_part_size: int
    max_parts: int
    max_inflated_size: int
    max_elements: int
    bulkdata_threshold: int
    index_blob_max: int  # stored in the index with its rows
    upload_timeout: float  # a store unfinished after this long is abandoned
    spool_dir: Path


@dataclass(frozen=True)
class Cleanup:
    """When deleted and abandoned blobs go."""

    delete_delay: int
    batch_size: int
    upload_timeout: float
    audit_retention_days: int


@dataclass(frozen=True)
class Pixels:
    """Transcoding, rendering and thumbnails."""

    conversion_workers: int
    max_conversion_size: int
    thumbnail_size: int


@dataclass(frozen=True)
class Search:
    qido_max_limit: int
    qido_strict: bool
    extended_query_tag_max: int


@dataclass(frozen=True)
class Export:
    allow: tuple[str, ...]  # destination URL prefixes
    request_credentials: bool
    operator_key: bool  # the de-identification key is the operator's (a key file)


@dataclass(frozen=True)
class Webhooks:
    """Webhook subscriptions: which targets are allowed, and the pace of delivery."""

    allow_private: bool
    timeout: float
    retry_window: float
    max_backoff: float
    concurrency: int
    poll_interval: float
    study_stable_after: float
    stream_seconds: float  # how long one live event stream stays open
    batch_size: int
    lease: float
    service_root: str  # this server's base URL: the events' source and serviceHostName


@dataclass(frozen=True)
class ArchiveSettings:
    """What the archive's services use, each its own group."""

    ingest: Ingest
    cleanup: Cleanup
    pixels: Pixels
    search: Search
    export: Export
    webhooks: Webhooks


@dataclass(frozen=True)
class Jobs:
    """The job runners of a node."""

    background_jobs: bool
    concurrency: int
    lease: float
    poll_interval: float
    cleanup_interval: float
    fhir_poll_interval: float


@dataclass(frozen=True)
class Fhir:
    """The FHIR sync: its server, credentials (secrets already read from their files) and
    pace."""

    url: str
    auth: str
    token: str
    username: str
    password: str
    token_url: str
    client_id: str
    client_secret: str
    scope: str
    timeout: float
    dicomweb_root: str  # the Endpoint address
    patient_system: str
    use_issuer: bool
    batch_size: int
    poll_interval: float
    lease: float

    def __repr__(self) -> str:  # never log a secret
        return f"Fhir(url={self.url!r}, auth={self.auth!r})"


@dataclass(frozen=True)
class Dimse:
    """The DIMSE service and the associations it opens."""

    host: str
    port: int
    aet: str
    callers: str
    partitions: str  # the data partition of calling AE titles (AET=partition,...)
    peers: str
    tls_certfile: str
    tls_keyfile: str
    tls_ca: str
    max_associations: int
    timeout: float
    max_part_size: int
    max_results: int  # C-FIND responses and instances looked up at once


@dataclass(frozen=True)
class RequestLimits:
    """How long and how large an HTTP request may be."""

    max_url_length: int
    max_header_size: int
    request_timeout: float
    min_upload_rate: int
    upload_rate_window: float


@dataclass(frozen=True)
class Auth:
    """Who may call the HTTP API (OpenID Connect bearer tokens)."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: str
    leeway: int
    key_refresh: float
    roles_claim: str
    roles_file: str


@dataclass(frozen=True)
class Cors:
    origins: str
    allow_credentials: bool
    max_age: int
