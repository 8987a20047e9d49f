"""The events a subscription gets, as Azure's DICOM service publishes them to Event Grid
(reference 9.3: types and data fields), in CloudEvents 1.0 structured JSON or the Event Grid
schema. Pure: values in, bytes out.

An event's id is its change-feed sequence: the idempotency key a receiver sees again when a
delivery is repeated (at-least-once), the same for every subscription.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from dicomhub.clock import isoformat
from dicomhub.model import Action, EventSource

PREFIX = "Microsoft.HealthcareApis."
CREATED = PREFIX + "DicomImageCreated"
UPDATED = PREFIX + "DicomImageUpdated"
DELETED = PREFIX + "DicomImageDeleted"
EVENT_TYPES = (CREATED, UPDATED, DELETED)
BY_ACTION = {Action.CREATE: CREATED, Action.UPDATE: UPDATED, Action.DELETE: DELETED}
SCHEMAS = ("cloudevents", "eventgrid")
MEDIA_TYPES = {
    "cloudevents": "application/cloudevents+json; charset=utf-8",
    "eventgrid": "application/json; charset=utf-8",
}
# filter field -> what of an event it matches (any of its values; case-insensitive)
FILTERS = ("partition", "modality", "sopClassUid")


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    time: datetime
    subject: str
    data: dict


def event_of(change: EventSource, root: str) -> Event:
    """The event of a change-feed entry; ``root``: this server's base URL (its host is the
    serviceHostName, as in Azure's events)."""
    host = urlsplit(root).netloc or root
    i = change.id
    return Event(
        id=str(change.sequence),
        type=BY_ACTION[change.action],
        time=change.timestamp,
        subject=f"{host}/v2/studies/{i.study}/series/{i.series}/instances/{i.sop}",
        data={
            "partitionName": i.partition,
            "imageStudyInstanceUid": i.study,
            "imageSeriesInstanceUid": i.series,
            "imageSopInstanceUid": i.sop,
            "serviceHostName": host,
            "sequenceNumber": change.sequence,
        },
    )


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
    return json.dumps(document, separators=(",", ":")).encode()


def matches(change: EventSource, event_types: tuple[str, ...], filter: dict) -> bool:
    """Whether a subscription wants the change. A filter on an attribute the entry no longer
    has (a deleted instance's modality and SOP class) lets it through: a receiver is told of
    the deletion of anything it may have been told of."""
    if BY_ACTION[change.action] not in event_types:
        return False
    values = {
        "partition": change.id.partition,
        "modality": change.modality,
        "sopClassUid": change.sop_class,
    }
    for field, wanted in filter.items():
        value = values[field]
        if wanted and value is not None and value.upper() not in {w.upper() for w in wanted}:
            return False
    return True
