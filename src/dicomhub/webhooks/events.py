"""The events a subscription gets, as Azure's DICOM service publishes them to Event Grid
(reference 9.3: types and data fields), in CloudEvents 1.0 structured JSON or the Event Grid
schema. Pure: values in, bytes out.

An event's id is its change-feed sequence: the idempotency key a receiver sees again when a
delivery is repeated (at-least-once), the same for every subscription. A StudyStable event
(dicomhub's own) is named after the study's last change: ``{sequence}.stable``; a
SeriesStable after the series': ``{sequence}.series-stable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import orjson

from dicomhub.clock import isoformat
from dicomhub.model import DEFAULT_PARTITION, OPERATION_FINISHED, Action, EventSource

PREFIX = "Microsoft.HealthcareApis."
CREATED = PREFIX + "DicomImageCreated"
UPDATED = PREFIX + "DicomImageUpdated"
DELETED = PREFIX + "DicomImageDeleted"
IMAGE_TYPES = (CREATED, UPDATED, DELETED)  # a subscription's default
# no new instance in a study for the quiet period (--webhook-study-stable-after): once, and
# again only after new instances arrive
STUDY_STABLE = "dicomhub.StudyStable"
SERIES_STABLE = "dicomhub.SeriesStable"  # the same, of a series
STABLE_TYPES = (STUDY_STABLE, SERIES_STABLE)
# an export, bulk update or extended-query-tag reindex completed or failed (model.py)
EVENT_TYPES = (*IMAGE_TYPES, *STABLE_TYPES, OPERATION_FINISHED)
BY_ACTION = {Action.CREATE: CREATED, Action.UPDATE: UPDATED, Action.DELETE: DELETED}
SCHEMAS = ("cloudevents", "eventgrid")
MEDIA_TYPES = {
    "cloudevents": "application/cloudevents+json; charset=utf-8",
    "eventgrid": "application/json; charset=utf-8",
}
# filter field -> what of an event it matches (any of its values; case-insensitive, but the
# partition's name)
FILTERS = ("partition", "modality", "sopClassUid")
# and "study": a QIDO-style study filter (webhooks/study_filter.py), matched by the index


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    time: datetime
    subject: str
    data: dict


def _root(host: str, partition: str) -> str:
    """The DICOMweb root an event's subject is under: the partition's, but for the default."""
    within = "" if partition == DEFAULT_PARTITION else f"/partitions/{partition}"
    return f"{host}/v2{within}"


def event_of(change: EventSource, root: str) -> Event:
    """The event of a change-feed entry; ``root``: this server's base URL (its host is the
    serviceHostName, as in Azure's events)."""
    host = urlsplit(root).netloc or root
    i = change.id
    return Event(
        id=str(change.sequence),
        type=BY_ACTION[change.action],
        time=change.timestamp,
        subject=f"{_root(host, i.partition)}/studies/{i.study}/series/{i.series}/instances/{i.sop}",
        data={
            "partitionName": i.partition,
            "imageStudyInstanceUid": i.study,
            "imageSeriesInstanceUid": i.series,
            "imageSopInstanceUid": i.sop,
            "serviceHostName": host,
            "sequenceNumber": change.sequence,
        },
    )


def stable_later(
    latest: datetime | None, last: int | None, read_to: int, now: datetime, quiet: timedelta
) -> datetime | None:
    """When to check a study (series) for its stable event again: its last new instance at
    ``latest``, its last change ``last``; None when it is stable now. Not before the quiet
    period has passed since ``latest``, nor while it has changes beyond ``read_to`` (the
    feed read so far)."""
    if latest is not None and (latest + quiet > now or last > read_to):
        return max(latest + quiet, now + quiet / 2)
    return None


def stable_event(place: tuple[str, str, str], sequence: int, time: datetime, root: str) -> Event:
    """The StudyStable event of a study (place: partition, study, '') or the SeriesStable
    event of a series (partition, study, series) whose last change is ``sequence``; ``time``:
    when it became stable."""
    partition, study, series = place
    host = urlsplit(root).netloc or root
    subject = f"{_root(host, partition)}/studies/{study}"
    data = {"partitionName": partition, "imageStudyInstanceUid": study}
    if series:
        subject += f"/series/{series}"
        data["imageSeriesInstanceUid"] = series
    return Event(
        id=f"{sequence}.series-stable" if series else f"{sequence}.stable",
        type=SERIES_STABLE if series else STUDY_STABLE,
        time=time,
        subject=subject,
        data={**data, "serviceHostName": host, "sequenceNumber": sequence},
    )


def operation_event(id: str, time: datetime, data: dict, root: str) -> Event:
    """The OperationFinished event ``id`` (``{operationId}.finished``) of the data written
    when the operation finished (storage/job_ops.py); ``time``: when it finished."""
    host = urlsplit(root).netloc or root
    href = f"{root.rstrip('/')}/v2/operations/{data['operationId']}"
    return Event(
        id=id,
        type=OPERATION_FINISHED,
        time=time,
        subject=f"{host}/v2/operations/{data['operationId']}",
        data={**data, "href": href, "serviceHostName": host},
    )


def operation_passes(partition: str | None, filter: dict) -> bool:
    """Whether an operation's event passes a subscription's filter: its partition, when the
    filter names partitions (a server-wide reindex passes none of those); the instance and
    study filters do not apply to operations."""
    wanted = filter.get("partition")
    return not wanted or partition in wanted


def body(event: Event, schema: str, root: str) -> bytes:
    """The request body of one delivery: a CloudEvent (structured mode), or an Event Grid
    array of one event."""
    if schema == "eventgrid":
        document: object = [
            {
                "id": event.id,
                "topic": root,
                "subject": event.subject,
                "data": event.data,
                "eventType": event.type,
                "dataVersion": "1",
                "metadataVersion": "1",
                "eventTime": isoformat(event.time),
            }
        ]
    else:
        document = {
            "specversion": "1.0",
            "id": event.id,
            "source": root,
            "type": event.type,
            "time": isoformat(event.time),
            "subject": event.subject,
            "datacontenttype": "application/json",
            "data": event.data,
        }
    return orjson.dumps(document)


def marks_stable(
    change: EventSource, event_types: tuple[str, ...], filter: dict
) -> list[tuple[str, str, str]]:
    """The places (partition, study, series: '' for the study) whose wait to be stable the
    change (a new instance, or a new version of one) starts for a subscription: those of the
    stable events it asks for, when the instance passes the filter."""
    if change.action is Action.DELETE or not any(t in event_types for t in STABLE_TYPES):
        return []
    if not passes(change, filter):
        return []
    i = change.id
    out = []
    if STUDY_STABLE in event_types:
        out.append((i.partition, i.study, ""))
    if SERIES_STABLE in event_types:
        out.append((i.partition, i.study, i.series))
    return out


def matches(change: EventSource, event_types: tuple[str, ...], filter: dict) -> bool:
    """Whether a subscription wants the change. A filter on an attribute the entry no longer
    has (a deleted instance's modality and SOP class) lets it through: a receiver is told of
    the deletion of anything it may have been told of."""
    return BY_ACTION[change.action] in event_types and passes(change, filter)


def passes(change: EventSource, filter: dict) -> bool:
    """Whether the change passes the subscription's filter (see ``matches``)."""
    values = {
        "partition": change.id.partition,
        "modality": change.modality,
        "sopClassUid": change.sop_class,
    }
    for field, value in values.items():
        wanted = filter.get(field)
        if not wanted or value is None:
            continue
        if field == "partition":  # names, exactly (a partition's roles are by name)
            if value not in wanted:
                return False
        elif value.upper() not in {w.upper() for w in wanted}:
            return False
    return True
