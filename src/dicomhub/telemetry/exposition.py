"""A scrape, and the folder several processes share their metrics in.

``serve --workers N`` runs N server processes (and the DIMSE service in one of its own); a
scrape reaches one of them, and must answer for all. prometheus-client's multiprocess mode
does that: each process keeps its values in memory-mapped files of one folder, and a scrape
sums the files. The supervisor makes the folder (private, empty), hands it to its processes
in PROMETHEUS_MULTIPROC_DIR and removes it when they have all ended (``shared_folder``).

What is not counted as it happens is read when scraped: the job queue and the FHIR sync (from
the index, shared by every process), and the processes' resources (from /proc, for each live
process: prometheus-client's process collector, summed).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for the folder
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LOWEST = ("process_start_time_seconds", "process_max_fds")  # not summed: the least


@contextlib.contextmanager
def shared_folder() -> Iterator[str]:
    """A new private folder (mode 0700, empty) for the metrics of the processes started
    within, named in their environment; removed, with what they wrote, at the end. What else
    they share goes there too (the metrics are its ``*.db`` files only)."""
    folder = tempfile.mkdtemp(prefix="dicomhub-metrics-")  # 0700, new: nobody else's files
    previous = os.environ.get(ENVIRONMENT)
    os.environ[ENVIRONMENT] = folder
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = previous
        shutil.rmtree(folder, ignore_errors=True)


def shared() -> str | None:
    """The folder this process shares its metrics in (None: its metrics are its own)."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get(ENVIRONMENT)


def leave() -> None:
    """This process ends: it no longer counts among the live ones (its counters stay)."""
    folder = shared()
    if folder is not None:
        mark_process_dead(os.getpid(), folder)


@dataclass(frozen=True)
class JobQueue:
    """The jobs of one type waiting for a runner (the index's view, shared by all nodes)."""

    type: str
    ready: int  # not started and due, or their runner's lease ran out
    oldest_seconds: float  # how long the oldest of them has been due (0: none)
    running: int


@dataclass(frozen=True)
class FhirSync:
    lag: int
    synced: int
    failures: int


@dataclass(frozen=True)
class Webhook:
    """One webhook subscription, as the index holds it (shared by all nodes)."""

    id: str
    state: str  # active, paused, failing
    lag: int  # change-feed entries after its cursor
    delivered: int
    dead_letters: int


def render(
    jobs: list[JobQueue], fhir: FhirSync | None, webhooks: list[Webhook] | None = None
) -> bytes:
    """The scrape: every process's metrics, then what was read for it."""
    folder = shared()
    if folder is None:
        text = generate_latest(REGISTRY)  # this process's own, its resources included
    else:
        live = _live(folder)  # first: the processes that died no longer count as alive
        registry = CollectorRegistry()
        MultiProcessCollector(registry, folder)
        registry.register(_Resources(live))
        text = generate_latest(registry)
    return text + generate_latest(_Read(jobs, fhir, webhooks or []))


class _Read:
    def __init__(self, jobs: list[JobQueue], fhir: FhirSync | None, webhooks: list[Webhook]):
        self.jobs, self.fhir, self.webhooks = jobs, fhir, webhooks

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "dicomhub_job_queue_depth",
            "Jobs ready to run and not running (not started and due, or their runner died), "
            "by type.",
            labels=["type"],
        )
        oldest = GaugeMetricFamily(
            "dicomhub_job_queue_oldest_age_seconds",
            "Seconds the oldest ready job has been waiting since it was due, by type.",
            labels=["type"],
        )
        running = GaugeMetricFamily(
            "dicomhub_jobs_running", "Jobs a runner holds now, by type.", labels=["type"]
        )
        for queue in self.jobs:
            ready.add_metric([queue.type], queue.ready)
            oldest.add_metric([queue.type], queue.oldest_seconds)
            running.add_metric([queue.type], queue.running)
        yield from (ready, oldest, running)
        if self.fhir is not None:  # the names the FHIR sync has always had
            yield GaugeMetricFamily(
                "dicomhub_fhir_sync_lag",
                "Change-feed entries not yet synced to FHIR.",
                value=self.fhir.lag,
            )
            yield CounterMetricFamily(
                "dicomhub_fhir_sync_synced_total",
                "Change-feed entries synced to FHIR.",
                value=self.fhir.synced,
            )
            yield CounterMetricFamily(
                "dicomhub_fhir_sync_failures_total",
                "Changes the FHIR server refused for good.",
                value=self.fhir.failures,
            )
        yield from _webhooks(self.webhooks)


def _webhooks(webhooks: list[Webhook]) -> Iterator[Metric]:
    """Each subscription's lag, deliveries, dead letters and state (read from the index)."""
    lag = GaugeMetricFamily(
        "dicomhub_webhook_lag",
        "Change-feed entries a webhook subscription's delivery has not passed yet.",
        labels=["subscription"],
    )
    delivered = CounterMetricFamily(
        "dicomhub_webhook_delivered",
        "Events a webhook subscription's receiver took (by every node).",
        labels=["subscription"],
    )
    dead = GaugeMetricFamily(
        "dicomhub_webhook_dead_letters",
        "Events of a webhook subscription in its dead-letter list.",
        labels=["subscription"],
    )
    state = GaugeMetricFamily(
        "dicomhub_webhook_state",
        "1 for a webhook subscription's state (active, paused or failing), by subscription.",
        labels=["subscription", "state"],
    )
    for hook in webhooks:
        lag.add_metric([hook.id], hook.lag)
        delivered.add_metric([hook.id], hook.delivered)
        dead.add_metric([hook.id], hook.dead_letters)
        state.add_metric([hook.id, hook.state], 1)
    yield from (lag, delivered, dead, state)


class _Resources:
    """prometheus-client's process metrics, over the ``live`` processes: CPU time, memory and
    open files summed; start time and the file limit, the least."""

    def __init__(self, live: list[int]):
        self.live = live

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.live:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                total = families.setdefault(
                    family.name,
                    Metric(
                        family.name,
                        family.documentation + " (over the live dicomhub processes)",
                        family.type,
                    ),
                )
                for sample in family.samples:
                    if not total.samples:
                        total.add_sample(sample.name, {}, sample.value)
                        continue
                    before = total.samples[0]
                    merged = (
                        min(before.value, sample.value)
                        if sample.name in LOWEST
                        else before.value + sample.value
                    )
                    total.samples[0] = before._replace(value=merged)
        yield from families.values()


def _live(folder: str) -> list[int]:
    """The processes counted alive (``instruments.alive``) that are; those that ended without
    saying so (killed) are marked dead here, for this scrape and the next."""
    pids = []
    for path in glob.glob(os.path.join(folder, "gauge_livesum_*.db")):
        pid = int(os.path.basename(path)[len("gauge_livesum_") : -len(".db")])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, folder)
            continue
        except PermissionError:
            pass
        pids.append(pid)
    return sorted(pids)
