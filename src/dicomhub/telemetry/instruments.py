"""The metrics the adapters record. Every one has labels, so that no value is created before
the process knows whether it shares its metrics with others (``exposition.share``).

The hot path (a STOW of a small instance, about 1.5 ms of CPU) records one request: its
children are looked up once per label set and kept (``request``), so that recording is two
increments of a float in a shared-memory map, no label handling.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # the *_created series: not kept in multiprocess mode either

# seconds: a small STOW takes about a millisecond, a whole-study download can take minutes
LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route matched

HTTP_REQUESTS = Counter(
    "dicomhub_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "dicomhub_http_request_duration_seconds",
    "Time from a request's arrival to its last response byte, by route template, method and "
    "status.",
    ["route", "method", "status"],
    buckets=LATENCY,
)
RETRIEVE_BYTES = Counter(
    "dicomhub_retrieve_bytes",
    "Response body bytes sent by WADO-RS, WADO-URI, rendered and thumbnail routes.",
    ["route"],
)
STOW_INSTANCES = Counter(
    "dicomhub_stow_instances",
    "STOW-RS parts stored, or refused (a failure in the response).",
    ["outcome"],
)
STOW_BYTES = Counter(
    "dicomhub_stow_bytes",
    "Bytes of STOW-RS parts stored, or refused.",
    ["outcome"],
)
QIDO_DURATION = Histogram(
    "dicomhub_qido_duration_seconds",
    "Time a QIDO-RS search (or count) takes in the archive, by level.",
    ["level", "kind"],
    buckets=LATENCY,
)
INDEX_DURATION = Histogram(
    "dicomhub_index_operation_duration_seconds",
    "Time of each index operation (a method of the index seam).",
    ["operation"],
    buckets=LATENCY,
)
INDEX_ERRORS = Counter(
    "dicomhub_index_operation_errors",
    "Index operations that failed (the index itself, not a request's own error).",
    ["operation"],
)
BLOB_DURATION = Histogram(
    "dicomhub_blob_operation_duration_seconds",
    "Time of each blob store operation (a method of the blob store seam).",
    ["operation"],
    buckets=LATENCY,
)
BLOB_ERRORS = Counter(
    "dicomhub_blob_operation_errors",
    "Blob store operations that failed.",
    ["operation"],
)
DIMSE_ASSOCIATIONS = Counter(
    "dicomhub_dimse_associations",
    "DIMSE associations: accepted, rejected or aborted.",
    ["outcome"],
)
DIMSE_OPERATIONS = Counter(
    "dicomhub_dimse_operations",
    "DIMSE operations answered (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, N-ACTION), by status.",
    ["command", "status"],
)
WEBHOOK_DELIVERIES = Counter(
    "dicomhub_webhook_deliveries",
    "Webhook delivery attempts and their outcome (delivered, failed, replayed, replay_failed), "
    "and events dead-lettered (dead_lettered), by this process.",
    ["outcome"],
)
WEBHOOK_DURATION = Histogram(
    "dicomhub_webhook_delivery_duration_seconds",
    "Time of one webhook delivery attempt (the receiver's answer, or the failure), by outcome.",
    ["outcome"],
    buckets=LATENCY,
)
PROCESSES = Gauge(
    "dicomhub_processes",
    "Live dicomhub processes whose metrics this scrape sums, by kind (http: server "
    "processes; dimse: the DIMSE service's own process beside them).",
    ["kind"],
    multiprocess_mode="livesum",
)

_requests: dict[tuple, tuple] = {}


def request(route: str, method: str, status: int, seconds: float) -> None:
    """Record one HTTP request (``route``: its template, or UNMATCHED)."""
    if method not in METHODS:  # the label's values stay few, whatever clients send
        method = "other"
    key = (route, method, status)
    children = _requests.get(key)
    if children is None:
        labels = (route, method, str(status))
        children = _requests.setdefault(
            key, (HTTP_REQUESTS.labels(*labels), HTTP_DURATION.labels(*labels))
        )
    children[0].inc()
    children[1].observe(seconds)


_retrieved: dict[str, object] = {}


def retrieved(route: str, size: int) -> None:
    """Record the body bytes one retrieval sent."""
    child = _retrieved.get(route)
    if child is None:
        child = _retrieved.setdefault(route, RETRIEVE_BYTES.labels(route))
    child.inc(size)


_searches: dict[tuple[str, str], object] = {}


def searched(level: str, kind: str, seconds: float) -> None:
    """Record one QIDO-RS search (``kind`` search or count) at ``level``."""
    child = _searches.get((level, kind))
    if child is None:
        child = _searches.setdefault((level, kind), QIDO_DURATION.labels(level, kind))
    child.observe(seconds)


def _children(metric, *labels: str) -> list:
    return [metric.labels(label) for label in labels]


_stow: list = []


def stored(instances: int, size: int, refused: int, refused_size: int) -> None:
    """Record the parts of one STOW request."""
    if not _stow:
        _stow.append(_children(STOW_INSTANCES, "stored", "refused"))
        _stow.append(_children(STOW_BYTES, "stored", "refused"))
    (stored_count, refused_count), (stored_bytes, refused_bytes) = _stow
    if instances:
        stored_count.inc(instances)
        stored_bytes.inc(size)
    if refused:
        refused_count.inc(refused)
        refused_bytes.inc(refused_size)


def dimse_operation(command: str, status: int) -> None:
    """Record one DIMSE operation and its status (0x0000 ... 0xFFFF)."""
    label = f"0x{status:04X}" if isinstance(status, int) and 0 <= status <= 0xFFFF else "other"
    DIMSE_OPERATIONS.labels(command, label).inc()


def dimse_association(outcome: str) -> None:
    DIMSE_ASSOCIATIONS.labels(outcome).inc()


def webhook(outcome: str, seconds: float | None) -> None:
    """Record a webhook delivery attempt (with its time) or an event dead-lettered (None)."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    if seconds is not None:
        WEBHOOK_DURATION.labels(outcome).observe(seconds)


def alive(kind: str) -> None:
    """Count this process among the live ones (its metrics are summed with theirs)."""
    PROCESSES.labels(kind).set(1)
