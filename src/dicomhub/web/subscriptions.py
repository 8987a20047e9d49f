"""Webhook subscriptions (non-standard; issue 23): create, list, read, change (PATCH: pause,
resume, retarget) and delete them, and their dead letters with a replay action. The admin data
action guards every route. A subscription's secret is shown once, in the answer to its
creation."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomhub.clock import isoformat
from dicomhub.errors import InvalidRequest
from dicomhub.model import ADMIN, DeadLetter, Subscription
from dicomhub.web.access import granted_partitions
from dicomhub.web.common import MAX_OFFSET, archive, base_url, json_body, page

EVENT_ID = re.compile(
    r"([0-9]{1,16})(\.stable|\.series-stable)?|[0-9A-Za-z-]{1,64}(\.finished)", re.ASCII
)  # webhooks.events: ids


def _within(request: Request) -> frozenset[str] | None:
    """The partitions a partition-scoped administrator has (None: everywhere): it sees and
    manages only the subscriptions whose filter.partition lies within them."""
    return granted_partitions(request.scope, ADMIN)


async def create(request: Request) -> JSONResponse:
    subscription = await archive(request).webhooks.create(
        await json_body(request), _within(request)
    )
    document = {**_subscription(subscription), "secret": subscription.secret}
    return JSONResponse(
        document,
        status_code=201,
        headers={"Location": f"{base_url(request)}subscriptions/{subscription.id}"},
    )


async def listing(request: Request) -> JSONResponse:
    found = await archive(request).webhooks.listing(_within(request))
    return JSONResponse([_subscription(s) for s in found])


async def get(request: Request) -> JSONResponse:
    service = archive(request).webhooks
    subscription = await service.get(request.path_params["id"], _within(request))
    dead = await service.count_deadletters(subscription.id)
    return JSONResponse({**_subscription(subscription), "deadLetters": dead})


async def update(request: Request) -> JSONResponse:
    service = archive(request).webhooks
    subscription = await service.update(
        request.path_params["id"], await json_body(request), _within(request)
    )
    return JSONResponse(_subscription(subscription))


async def delete(request: Request) -> Response:
    await archive(request).webhooks.delete(request.path_params["id"], _within(request))
    return Response(status_code=204)


async def deadletters(request: Request) -> JSONResponse:
    offset, limit = page(request, 100, 1000)
    found = await archive(request).webhooks.deadletters(
        request.path_params["id"], offset, limit, _within(request)
    )
    return JSONResponse([_dead(d) for d in found])


async def replay(request: Request) -> Response:
    event = request.path_params["event"]
    named = EVENT_ID.fullmatch(event)
    if named is None or (named[1] is not None and int(named[1]) > MAX_OFFSET):
        raise InvalidRequest(
            f"a dead letter is named by its event id (a sequence number, or one followed by "
            f".stable or .series-stable, or an operation id followed by .finished), not "
            f"{event[:40]!r}"
        )
    await archive(request).webhooks.replay(request.path_params["id"], event, _within(request))
    return Response(status_code=202)


def _subscription(s: Subscription) -> dict:
    return {
        "id": s.id,
        "url": s.url,
        "eventTypes": list(s.event_types),
        "filter": {k: v if isinstance(v, dict) else list(v) for k, v in s.filter.items()},
        "schema": s.schema,
        "state": s.state,
        "createdTime": isoformat(s.created),
        "updatedTime": isoformat(s.updated),
        "sequence": s.sequence,
        "delivered": s.delivered,
        "failingSince": isoformat(s.failing_since) if s.failing_since else None,
        "lastError": s.last_error,
    }


def _dead(d: DeadLetter) -> dict:
    return {
        "id": d.event_id,
        "sequence": d.sequence,
        "eventType": d.event_type,
        "error": d.error,
        "attempts": d.attempts,
        "deadTime": isoformat(d.dead),
        "replayPending": d.replay,
        "event": d.body,
    }
