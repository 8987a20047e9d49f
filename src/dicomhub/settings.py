"""The one settings object: read once at start-up, immutable afterwards.

Every field has a default and help text. Values come from (lowest to highest precedence) the
defaults, ``DICOMHUB_<NAME>`` environment variables, and command-line flags ``--<name>``.
The README's configuration table lists every field; a test checks that it does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomhub import settings_groups as groups
from dicomhub.settings_fields import _secret, _secret_file, _setting, convert


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "Address the HTTP server binds to.")
    port: int = _setting(8080, "Port the HTTP server listens on.")
    data_dir: str = _setting(
        "./dicomhub-data", "Folder for the embedded index, blobs and temporary spool files."
    )
    index_url: str = _setting(
        "",
        "Index database URL: sqlite:///path/index.sqlite or "
        "postgresql://user:password@host:port/database (a password belongs in the variable, "
        "PGPASSWORD or ~/.pgpass, not the flag). Empty: sqlite in data_dir.",
    )
    index_pool_size: int = _setting(10, "PostgreSQL: connections each process keeps open.")
    migrate_on_start: bool = _setting(
        True,
        "Apply pending schema migrations at start (under a lock, so nodes starting together "
        "upgrade once). Off: only `dicomhub db upgrade` does, and a node refuses an older schema.",
    )
    blob_url: str = _setting(
        "",
        "Blob store URL: file:///path/blobs, memory://, s3://bucket/prefix, az://container/prefix "
        "or gs://bucket/prefix (options as query parameters, credentials from the provider's "
        "environment variables). Empty: blobs/ in data_dir.",
    )
    fsync: str = _setting(
        "instance",
        "When stored data reaches the disk. instance: each instance's file (and its folder "
        "entry: by the file's own sync on ext4, XFS and Btrfs, by a sync of the folder "
        "elsewhere) and the index commit are synced before the store is acknowledged. off: the "
        "operating system writes them back later; faster, but a power cut or an OS crash can "
        "lose or truncate instances acknowledged in the seconds before it (a crash of dicomhub "
        "alone loses nothing). Object stores and PostgreSQL keep their own durability.",
    )
    blob_multipart_threshold: int = _setting(
        16 * 1024**2,
        "Object storage: instances up to this many bytes are written with one conditional PUT; "
        "larger ones are uploaded in 8 MiB parts.",
    )
    tls_certfile: str = _setting(
        "",
        "PEM certificate (with its chain) to serve HTTPS with, together with tls_keyfile. Empty: "
        "plain HTTP (terminate TLS in a reverse proxy in front).",
    )
    tls_keyfile: str = _setting("", "PEM private key of tls_certfile.")
    forwarded_allow_ips: str = _setting(
        "127.0.0.1",
        "Addresses or networks (comma-separated, CIDR; '*' for any) of reverse proxies whose "
        "Forwarded and X-Forwarded-For/-Proto/-Host headers are believed: the client address "
        "audited, and the scheme and host of RetrieveURL and BulkDataURI. Empty: none.",
    )
    public_url: str = _setting(
        "",
        "Base URL clients reach the server at, used in RetrieveURL and BulkDataURI "
        "(e.g. https://pacs.example.org). Empty: taken from each request.",
    )
    max_part_size: int = _setting(
        2 * 1024**3, "Largest accepted DICOM file (one STOW part), in bytes; larger gives 413."
    )
    max_url_length: int = _setting(
        8192, "Longest URL (path and query string) accepted, in bytes; longer gives 414."
    )
    max_header_size: int = _setting(
        64 * 1024,
        "Largest total size of a request's headers, in bytes (and at most 100 of them); more "
        "gives 431.",
    )
    max_parts: int = _setting(
        50_000,
        "Most parts one STOW request may hold; the request stops with 413 at the next one (the "
        "parts before it are stored).",
    )
    request_timeout: float = _setting(
        60.0, "Seconds a request body may send nothing before the request fails with 408."
    )
    min_upload_rate: int = _setting(
        4096,
        "Least bytes per second a request body must come at, measured over each "
        "upload_rate_window seconds spent waiting for it; slower fails with 408 (a body the "
        "server is slow to take is not held against the client). 0: no minimum.",
    )
    upload_rate_window: float = _setting(
        30.0, "Seconds over which min_upload_rate is measured (the first are a grace period)."
    )
    header_timeout: float = _setting(
        20.0,
        "Seconds a client may take to send a request's line and headers, from connecting (or "
        "from a kept-alive request's first byte); then the connection is closed (with 408). "
        "0: no limit.",
    )
    max_connections: int = _setting(
        0,
        "Most connections one server process holds; a connection over it is answered 503 and "
        "closed at once, while requests on those open go on. 0: from the open-file limit (which "
        "serve raises to the hard limit where allowed), leaving room for files: (limit - 256) / 2.",
    )
    max_inflated_size: int = _setting(
        512 * 1024**2,
        "Largest a deflated data set may expand to, in bytes; a larger one (a zip bomb) fails "
        "as that part's processing failure.",
    )
    max_elements: int = _setting(
        1_000_000,
        "Most data elements one instance may hold, those in sequence items included; more "
        "fails the part (as sequences nested over 64 deep do).",
    )
    bulkdata_threshold: int = _setting(
        1024, "Binary values longer than this many bytes are sent as BulkDataURI in metadata."
    )
    index_blob_max: int = _setting(
        64 * 1024,
        "Instances up to this many bytes are kept in the index itself (SQLite or PostgreSQL), "
        "written and synced with their index rows (one disk sync per store instead of two, no "
        "object PUT), not as blobs of their own; 0: every instance goes to the blob store.",
    )
    data_partitions: bool = _setting(
        False,
        "Data partitions: the routes of studies (STOW, upsert, QIDO, WADO, rendered, delete, "
        "bulk update), export and workitems (with their subscriptions and event channel) also "
        "under /v{n}/partitions/{name}/, each name its own UID namespace, created by its first "
        "store; the FHIR sync projects each partition's studies apart. Once a partition other "
        "than the default holds data, they cannot be switched off (the server refuses to start).",
    )
    delete_delay: int = _setting(
        3 * 24 * 3600,
        "Seconds a deleted instance's blob (or a version an upsert replaced, not the original) "
        "is kept before the cleanup job removes it.",
    )
    cleanup_interval: float = _setting(180.0, "Seconds between runs of the background cleanup job.")
    background_jobs: bool = _setting(
        True,
        "serve also runs the background work (job runners: blob cleanup, exports, ...; webhook "
        "delivery; the FHIR sync), in a process of its own when it runs several server "
        "processes. Off: only `dicomhub worker` processes run it.",
    )
    background_priority: str = _setting(
        "idle",
        "CPU priority of serve's background process beside its server processes: idle (Linux "
        "SCHED_IDLE: it runs on the CPU they leave and gives it up the moment they want it, so "
        "ingest and reads never wait for webhook delivery or a job; nice 19 elsewhere), low "
        "(nice 10) or normal.",
    )
    job_concurrency: int = _setting(2, "Jobs one process runs at once.")
    job_lease: float = _setting(
        30.0,
        "Seconds a job runner holds a job without renewing its lease (renewed every third of "
        "it); a job whose runner died is taken over by another after this long.",
    )
    job_poll_interval: float = _setting(1.0, "Seconds an idle job runner waits between claims.")
    cleanup_batch_size: int = _setting(100, "Deleted blobs removed per cleanup run.")
    upload_timeout: float = _setting(
        3600.0,
        "Seconds after which a store that has not finished (its node died, or it is that slow) "
        "is abandoned by the cleanup job and its blob deleted.",
    )
    conversion_workers: int = _setting(
        0,
        "Processes that transcode and render pixel data, one frame per task (0: one per core).",
    )
    max_conversion_size: int = _setting(
        1024**3,
        "Largest stored instance, in bytes, that is transcoded or rendered; a larger one is "
        "only served as stored (406 names transfer-syntax=*).",
    )
    thumbnail_size: int = _setting(
        128,
        "Width and height, in pixels, that a thumbnail fits in unless the request gives a "
        "viewport; these default thumbnails are cached in the blob store.",
    )
    fhir_url: str = _setting(
        "",
        "Base URL of a FHIR R4 server to keep in sync with the archive (Patient, Endpoint, "
        "ImagingStudy). Empty: no FHIR sync.",
    )
    fhir_auth: str = _setting(
        "none", "How to authenticate to the FHIR server: none, bearer, basic or oauth2."
    )
    fhir_token: str = _secret(
        "FHIR bearer token (fhir_auth bearer): this variable or the file only, never a flag."
    )
    fhir_token_file: str = _secret_file("fhir_token")
    fhir_username: str = _setting("", "FHIR user name (fhir_auth basic).")
    fhir_password: str = _secret(
        "FHIR password (fhir_auth basic): this variable or the file only, never a flag."
    )
    fhir_password_file: str = _secret_file("fhir_password")
    fhir_token_url: str = _setting(
        "", "OAuth2 token endpoint for the client-credentials grant (fhir_auth oauth2)."
    )
    fhir_client_id: str = _setting("", "OAuth2 client id (fhir_auth oauth2).")
    fhir_client_secret: str = _secret(
        "OAuth2 client secret (fhir_auth oauth2): this variable or the file only, never a flag."
    )
    fhir_client_secret_file: str = _secret_file("fhir_client_secret")
    fhir_scope: str = _setting("", "OAuth2 scope to ask for, if the server needs one.")
    fhir_patient_system: str = _setting(
        "", "Identifier system of PatientID in FHIR Patient resources (empty: none)."
    )
    fhir_use_issuer: bool = _setting(
        False, "Use IssuerOfPatientID (0010,0021), when present, as the patient identifier system."
    )
    fhir_batch_size: int = _setting(50, "Change-feed entries the FHIR sync reads at a time.")
    fhir_poll_interval: float = _setting(
        2.0, "Seconds the FHIR sync waits for new changes once it has caught up."
    )
    fhir_timeout: float = _setting(120.0, "Seconds one request to the FHIR server may take.")
    webhook_allow_private: bool = _setting(
        False,
        "Let webhook subscriptions target addresses on loopback, private, link-local or other "
        "non-public networks. Off: a URL whose host resolves to one is refused (400), and "
        "deliveries to it fail, so that the API cannot be used to reach internal services.",
    )
    webhook_timeout: float = _setting(
        10.0,
        "Seconds one webhook delivery (connect, send, answer) may take before it fails; keep it "
        "well under job_lease, the lease a delivering node holds a subscription by.",
    )
    webhook_retry_window: float = _setting(
        24 * 3600.0,
        "Seconds a webhook event is retried (exponential backoff with jitter) before it is "
        "dead-lettered and delivery moves on to the next event.",
    )
    webhook_max_backoff: float = _setting(
        300.0, "Longest wait, in seconds, between two attempts at delivering a webhook event."
    )
    webhook_concurrency: int = _setting(
        4, "Webhook subscriptions one process delivers to at once (each in order)."
    )
    webhook_poll_interval: float = _setting(
        1.0, "Seconds a caught-up webhook subscription waits before the change feed is read again."
    )
    webhook_study_stable_after: float = _setting(
        60.0,
        "Seconds without a new instance (or a new version of one) in a study (a series) after "
        "which subscribers to dicomhub.StudyStable (SeriesStable) are told it is stable; again "
        "only after new ones.",
    )
    event_stream_seconds: float = _setting(
        30.0,
        "Seconds a live event stream (GET /v2/events) stays open before it ends; clients "
        "resume with Last-Event-ID (browsers' EventSource does it by itself).",
    )
    webhook_batch_size: int = _setting(
        100,
        "Change-feed entries read at a time for one webhook subscription; its progress is "
        "recorded once per batch, so a node that dies mid-batch leaves at most this many "
        "events to be delivered again.",
    )
    auth_issuer: str = _setting(
        "",
        "OpenID Connect issuer whose bearer tokens (JWTs) are accepted; set, every route but "
        "/health/check needs one. Empty: no authentication (local use).",
    )
    auth_audience: str = _setting("", "The audience (aud) tokens must be issued for.")
    auth_jwks_url: str = _setting(
        "", "The issuer's JWKS address. Empty: taken from its OpenID Connect discovery document."
    )
    auth_algorithms: str = _setting(
        "RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,ES512,EdDSA",
        "Signature algorithms accepted, comma-separated (asymmetric ones only).",
    )
    auth_leeway: int = _setting(60, "Seconds of clock skew allowed on exp, nbf and iat.")
    auth_key_refresh: float = _setting(
        10.0,
        "Least seconds between fetches of the issuer's keys for tokens that name a key not held "
        "(so new keys are found, and random key ids cannot flood the issuer).",
    )
    auth_roles_claim: str = _setting(
        "roles",
        "Token claim holding the caller's roles: a list or a space-separated string; a dotted "
        "path reaches into objects (realm_access.roles).",
    )
    auth_roles_file: str = _setting(
        "",
        "Role file in Microsoft's roles.json format: each role's dataActions and "
        "notDataActions. Empty: the built-in roles (globalReader, globalWriter, globalDeleter, "
        "globalAdmin).",
    )
    audit_log: str = _setting(
        "index",
        "Where the audit log is kept: index (a table of the index, searchable at /v2/audit), a "
        "file path (JSON lines, appended and synced to disk), or off.",
    )
    audit_retention_days: int = _setting(
        0, "Days index audit entries are kept (the cleanup job removes older ones). 0: forever."
    )
    deidentify_key_file: str = _setting(
        "",
        "File holding the key that de-identified downloads derive their new UIDs, pseudonyms "
        "and date offset from (at least 16 bytes; trailing white space ignored): the same on "
        "every node and across restarts gives the same UIDs. Empty: a random key drawn at "
        "start, shared by that serve's processes only.",
    )
    allow_unauthenticated: bool = _setting(
        False,
        "Serve without authentication on an address other than loopback (logs a warning). "
        "Off: serve refuses to start that way.",
    )
    dimse_port: int = _setting(0, "Port of the DIMSE service on host; 0: no DIMSE service.")
    dimse_aet: str = _setting("DICOMHUB", "The DIMSE service's own AE title (called AE).")
    dimse_callers: str = _setting(
        "",
        "Calling AE titles allowed to use the DIMSE service, with their permissions: "
        "AET[@address]=store+find+retrieve, comma-separated. Empty: any caller may do "
        "everything (only on loopback unless allow_unauthenticated).",
    )
    dimse_partitions: str = _setting(
        "",
        "The data partition of calling AE titles: AET=partition, comma-separated (needs "
        "data_partitions). Their stores, queries, retrievals, storage commitment and worklist "
        "(MWL, UPS) address that partition (a store creates it); other callers the default "
        "partition.",
    )
    dimse_peers: str = _setting(
        "",
        "DIMSE peers: AET=host:port, or AET=tls://host:port for DICOM TLS, comma-separated. "
        "C-MOVE may send only to them (another destination gets 0xA801); a peer asking for "
        "storage commitment gets its report on a new association to that address.",
    )
    dimse_tls_certfile: str = _setting(
        "",
        "PEM certificate (with its chain) for DICOM TLS on the DIMSE port, with "
        "dimse_tls_keyfile; also presented to tls:// peers. Empty: plain TCP.",
    )
    dimse_tls_keyfile: str = _setting("", "PEM private key of dimse_tls_certfile.")
    dimse_tls_ca: str = _setting(
        "",
        "PEM CA certificates that DIMSE callers' certificates must be signed by (callers must "
        "then present one), and that tls:// peers' certificates are checked against. Empty: "
        "callers are not asked for a certificate; peers are checked against the system's CAs.",
    )
    dimse_max_associations: int = _setting(10, "Most DIMSE associations served at once.")
    dimse_timeout: float = _setting(
        60.0, "Seconds a DIMSE peer may stay silent within an association before it is aborted."
    )
    cors_origins: str = _setting(
        "",
        "Origins whose browser pages may call the API (CORS), comma-separated, e.g. "
        "https://viewer.example.org; * for any. Empty: no CORS headers.",
    )
    cors_allow_credentials: bool = _setting(
        False, "Let those origins send cookies and HTTP authentication (not with *)."
    )
    cors_max_age: int = _setting(600, "Seconds a browser may keep a CORS preflight answer.")
    viewer: str = _setting(
        "",
        "Folder of an OHIF viewer build (package/dist of `npm pack @ohif/app`) to serve: its "
        "study list at /viewer, its files at the paths it asks for, an app-config.js made for "
        "this server. Empty: no viewer.",
    )
    viewer_config: str = _setting(
        "",
        "A JavaScript file served as the viewer's /app-config.js instead of the one dicomhub "
        "makes (e.g. with OHIF's oidc block when authentication is on). Empty: made by dicomhub.",
    )
    console: bool = _setting(
        True,
        "Serve the web console (a small browser app over this API) at /, its files under "
        "/console/.",
    )
    console_client_id: str = _setting(
        "",
        "The OpenID Connect client id (a public client, authorization code with PKCE, redirect "
        "URI the console's address) the web console signs in with when authentication is on. "
        "Empty: the console asks for a token to be pasted.",
    )
    console_scopes: str = _setting(
        "openid",
        "Scopes the web console asks the OpenID Connect issuer for (space-separated), e.g. "
        "'openid profile' or an API scope the issuer needs to put the audience in the token.",
    )
    qido_max_limit: int = _setting(
        1000, "Largest page a search returns; a larger limit is lowered to it, with a warning."
    )
    extended_query_tag_max: int = _setting(
        128, "Most extended query tags that can be added (POST /extendedquerytags)."
    )
    qido_strict: bool = _setting(
        False, "Reject searches with unknown or unsupported query keys (400), not ignore them."
    )
    export_allow: str = _setting(
        "",
        "Destinations POST /export may write to: URL prefixes (file:///folder, s3://bucket/prefix, "
        "az://container/prefix, gs://bucket/prefix, or an Azure container's https URL for "
        "Microsoft's azureblob type), comma-separated; --export-allow is repeatable. An entry's "
        "query parameters are the store's options (endpoint, region, allow_http, ...). Empty: "
        "no export is allowed.",
    )
    export_request_credentials: bool = _setting(
        False,
        "Accept credentials in an export request's body (an azureblob connectionString with "
        "AccountKey, a SAS in blobContainerUri); they are kept in the export's job row in the "
        "index (any node may run the job), readable by whoever reads the index. Off: such a "
        "request gets 403, credentials come from the environment only.",
    )
    log_level: str = _setting("info", "Log level: debug, info, warning or error.")
    log_format: str = _setting(
        "text",
        "Log lines as readable text, or json: one object per line (time, level, logger, "
        "message, request_id; method, route, status, duration_ms, user and partition on request "
        "lines).",
    )
    access_log: bool = _setting(
        False,
        "Log one line per HTTP request (method, path, route, status, duration, user, request "
        "id), at info level. Off: only with log_level debug.",
    )
    workers: int = _setting(
        0,
        "HTTP server processes (0: one per core): all share the index, the blob store and the "
        "port. Crash recovery runs once, before they start.",
    )
    worker_healthcheck_timeout: int = _setting(
        5,
        "Seconds a server process (of several) may take to answer serve's liveness check "
        "(every half second) before it is killed and started again; raise it where a process "
        "can be slow to answer, e.g. a loaded or instrumented machine.",
    )

    @property
    def server_processes(self) -> int:
        """How many HTTP server processes ``serve`` runs."""
        return self.workers or os.cpu_count() or 1

    @property
    def resolved_index_url(self) -> str:
        if self.index_url:
            return self.index_url
        return "sqlite://" + str(Path(self.data_dir).resolve() / "index.sqlite")

    @property
    def resolved_blob_url(self) -> str:
        if self.blob_url:
            return self.blob_url
        return "file://" + str(Path(self.data_dir).resolve() / "blobs")

    @property
    def dicomweb_root(self) -> str:
        """The DICOMweb base URL clients reach (the address of the FHIR Endpoint)."""
        base = self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"
        return f"{base}/v2"

    @functools.cached_property
    def spool_dir(self) -> Path:
        """Where request bodies are spooled before they are parsed and stored."""
        return Path(self.data_dir).resolve() / "spool"

    # The groups each layer is handed (settings_groups.py).

    def _group(self, cls: type, prefix: str = "", **values: Any) -> Any:
        """A ``cls`` whose fields are the settings named ``prefix`` + field (else the field's
        own name), but for those ``values`` give."""
        for f in dataclasses.fields(cls):
            if f.name not in values:
                name = prefix + f.name if hasattr(self, prefix + f.name) else f.name
                values[f.name] = getattr(self, name)
        return cls(**values)

    @property
    def ingest(self) -> groups.Ingest:
        return self._group(groups.Ingest)

    @property
    def archive(self) -> groups.ArchiveSettings:
        return groups.ArchiveSettings(
            self.ingest,
            self._group(groups.Cleanup, "cleanup_"),
            self._group(groups.Pixels),
            self._group(groups.Search),
            self._group(
                groups.Export,
                "export_",
                allow=tuple(u.strip() for u in self.export_allow.split(",") if u.strip()),
                operator_key=bool(self.deidentify_key_file),
            ),
            self.webhooks,
        )

    @property
    def jobs(self) -> groups.Jobs:
        return self._group(groups.Jobs, "job_")

    @property
    def fhir(self) -> groups.Fhir:
        """Its secrets read from their files (see ``secret``)."""
        return self._group(
            groups.Fhir,
            "fhir_",
            token=self.secret("fhir_token"),
            password=self.secret("fhir_password"),
            client_secret=self.secret("fhir_client_secret"),
            lease=self.job_lease,
        )

    @property
    def webhooks(self) -> groups.Webhooks:
        root = self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"
        return self._group(
            groups.Webhooks,
            "webhook_",
            lease=self.job_lease,
            service_root=root,
            stream_seconds=self.event_stream_seconds,
        )

    @property
    def dimse(self) -> groups.Dimse:
        return self._group(groups.Dimse, "dimse_", max_results=self.qido_max_limit)

    @property
    def request_limits(self) -> groups.RequestLimits:
        return self._group(groups.RequestLimits)

    @property
    def auth(self) -> groups.Auth:
        return self._group(groups.Auth, "auth_")

    @property
    def cors(self) -> groups.Cors:
        return self._group(groups.Cors, "cors_")

    def environ(self) -> dict[str, str]:
        """These settings as ``DICOMHUB_*`` variables (what ``load`` reads back)."""
        return {
            "DICOMHUB_" + f.name.upper(): str(getattr(self, f.name)).lower()
            if isinstance(f.default, bool)
            else str(getattr(self, f.name))
            for f in self.fields()
        }

    def secret(self, name: str) -> str:
        """A secret setting's value: from the file its ``<name>_file`` setting names, else its
        own (from the environment). Raises ValueError for an unreadable or empty file, or when
        both are given."""
        path, value = getattr(self, name + "_file"), getattr(self, name)
        if not path:
            return value
        if value:
            raise ValueError(
                f"DICOMHUB_{name.upper()} and {name}_file are both set; give one of them"
            )
        try:
            text = Path(path).read_text().rstrip()
        except OSError as exc:
            raise ValueError(f"cannot read the {name} file {path}: {exc.strerror}") from exc
        if not text:
            raise ValueError(f"the {name} file {path} is empty")
        return text

    @classmethod
    def secrets(cls) -> list[str]:
        """The names of the settings never taken from a flag."""
        return [f.name for f in cls.fields() if f.metadata.get("secret")]

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then ``DICOMHUB_*`` variables, then ``overrides`` (e.g. parsed flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in cls.fields():
            raw = environ.get("DICOMHUB_" + f.name.upper())
            if raw is not None:
                values[f.name] = convert(f, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return cls(**values)
