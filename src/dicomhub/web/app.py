"""The ASGI application: routes of every API version over one archive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route, WebSocketRoute

from dicomhub.archive.archive import Archive
from dicomhub.dicom.levels import Level
from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.model import ADMIN, DEFAULT_PARTITION, DELETE, EXPORT, MANAGE_TAGS, READ, WRITE
from dicomhub.settings import Settings
from dicomhub.telemetry import exposition, instruments
from dicomhub.web import (
    audit,
    bulk_update,
    changefeed,
    deidentified,
    delete,
    deleted,
    errors,
    event_stream,
    export,
    extended_tags,
    fhir_sync,
    health,
    metrics,
    openapi,
    operations,
    partitions,
    qido,
    rendered,
    stow,
    subscriptions,
    wado,
    wado_uri,
    workitem_events,
    workitems,
)
from dicomhub.web.access import authorize, authorize_somewhere
from dicomhub.web.audit import ACTION, ROUTE
from dicomhub.web.auth import authentication
from dicomhub.web.console import console
from dicomhub.web.cors import cors
from dicomhub.web.forwarded import forwarded
from dicomhub.web.limits import limits
from dicomhub.web.routing import IndexedRouter
from dicomhub.web.versions import VERSIONS, api_versions
from dicomhub.web.viewer import viewer


class UIDConvertor(StringConvertor):
    """A UID path segment: any segment but the words of other routes at the same place
    (``count`` of the QIDO counts, ``$bulkUpdate``), so that /studies/count is not also study
    "count" (its 405 would allow POST and DELETE) and a PUT to /studies/$bulkUpdate is a 405,
    not an upsert of study "$bulkUpdate"."""

    regex = r"(?!(?:count|\$bulkUpdate)(?:/|$))[^/]+"


register_url_convertor("uid", UIDConvertor())
STUDY = "/studies/{study:uid}"
SERIES = STUDY + "/series/{series:uid}"
INSTANCE = SERIES + "/instances/{sop:uid}"
FRAMES = INSTANCE + "/frames/{frames}"
TAG = "/extendedquerytags/{tag}"
WORKITEM = "/workitems/{workitem:uid}"
SUBSCRIBER = WORKITEM + "/subscribers/{aetitle}"
WEBHOOK = "/subscriptions/{id}"
DEIDENTIFYING = {"study", "series", "instance"}  # the routes that take deidentify=true
# server routes open to partition-scoped roles: their answers are narrowed to the caller's
# partitions (web/event_stream, web/subscriptions)
NARROWED = {
    "event-stream",
    "subscription-create",
    "subscriptions",
    "subscription",
    "subscription-update",
    "subscription-delete",
    "deadletters",
    "deadletter-replay",
}


class ActionRoute(Route):
    """A route that declares the data action it needs (None: any caller) and checks it."""

    def __init__(
        self,
        path: str,
        endpoint,
        methods: list[str],
        name: str,
        action: str | None,
        version: int | None = None,
        base: str | None = None,
        in_partitions: bool = False,
        partitioned: bool = False,
    ):
        """``base``: the route's name without its version and partition prefix; a route
        ``in_partitions`` is one of a data partition's (roles may be that partition's), and a
        ``partitioned`` one's path names the partition (``{partition}``)."""
        base = base or (name.split("-", 1)[1] if version is not None else name)

        async def guarded(request):
            request.scope[ROUTE] = name
            request.scope[ACTION] = action
            if in_partitions:  # a route of a data partition's: roles may be that partition's
                where = request.path_params.get("partition", DEFAULT_PARTITION)
                authorize(request.scope, action, where)
            elif base in NARROWED and action is not None:
                authorize_somewhere(request.scope, action)
            else:
                authorize(request.scope, action)
            if partitioned:  # a store may create its partition; other requests need it
                await partitions.resolve(request, create=base.startswith(("stow", "upsert")))
            if (
                base not in DEIDENTIFYING
                and _may_name(request.scope["query_string"], b"deidentify")  # cheap first
                and deidentified.asked(request) is not None
            ):
                # never ignored: the client would get the PHI it asked to have removed
                raise InvalidRequest(
                    f"{deidentified.FLAG}=true applies to study, series and instance retrieval "
                    "as a ZIP download only"
                )
            if version is not None:
                request.scope["route_version"] = version
            return await endpoint(request)

        super().__init__(path, guarded, methods=methods, name=name)
        self.action = action


def _may_name(query: bytes, name: bytes) -> bool:
    """Whether a query string may hold parameter ``name`` (in any case, or %-escaped)."""
    return b"%" in query or name in query.lower()


def _versioned(path: str, endpoint, methods: list[str], name: str, action: str) -> list[Route]:
    """The route in each API version, and in each version's data partitions when the route
    is one of a partition's (web/partitions)."""
    ours = partitions.has_partitions(path)
    out = [
        ActionRoute(
            f"/v{n}{path}", endpoint, methods, f"v{n}-{name}", action, n, in_partitions=ours
        )
        for n in VERSIONS
    ]
    if ours:
        out += [
            ActionRoute(
                f"/v{n}/partitions/{{partition}}{path}",
                endpoint,
                methods,
                f"v{n}-partition-{name}",
                action,
                version=n,
                base=name,
                in_partitions=True,
                partitioned=True,
            )
            for n in VERSIONS
        ]
    return out


def _search_routes() -> list[tuple]:
    """QIDO-RS resources and their ``/count`` variants (before the WADO routes they shadow)."""
    out = []
    for path, level in (
        ("/studies", Level.STUDY),
        ("/series", Level.SERIES),
        ("/instances", Level.INSTANCE),
        (STUDY + "/series", Level.SERIES),
        (STUDY + "/instances", Level.INSTANCE),
        (SERIES + "/instances", Level.INSTANCE),
    ):
        name = "search" + path.replace("/", "-").replace("{", "").replace("}", "")
        out.append((path + "/count", qido.count(level), ["GET"], name + "-count", READ))
        out.append((path, qido.search(level), ["GET"], name, READ))
    return out


def routes() -> list[BaseRoute]:
    table = [
        *_search_routes(),
        ("/studies", stow.store, ["POST"], "stow", WRITE),
        # before STUDY: "$bulkUpdate" is no study (v1 answers 404, as Microsoft's)
        ("/studies/$bulkUpdate", bulk_update.bulk_update, ["POST"], "bulk-update", WRITE),
        (STUDY, stow.store, ["POST"], "stow-study", WRITE),
        ("/studies", stow.upsert, ["PUT"], "upsert", WRITE),
        (STUDY, stow.upsert, ["PUT"], "upsert-study", WRITE),
        (STUDY, wado.retrieve, ["GET"], "study", READ),
        (SERIES, wado.retrieve, ["GET"], "series", READ),
        (INSTANCE, wado.retrieve, ["GET"], "instance", READ),
        (STUDY + "/metadata", wado.metadata, ["GET"], "study-metadata", READ),
        (SERIES + "/metadata", wado.metadata, ["GET"], "series-metadata", READ),
        (INSTANCE + "/metadata", wado.metadata, ["GET"], "instance-metadata", READ),
        (FRAMES, wado.frames, ["GET"], "frames", READ),
        (STUDY + "/rendered", rendered.rendered, ["GET"], "study-rendered", READ),
        (SERIES + "/rendered", rendered.rendered, ["GET"], "series-rendered", READ),
        (INSTANCE + "/rendered", rendered.rendered, ["GET"], "instance-rendered", READ),
        (FRAMES + "/rendered", rendered.rendered, ["GET"], "frames-rendered", READ),
        (STUDY + "/thumbnail", rendered.thumbnail, ["GET"], "study-thumbnail", READ),
        (SERIES + "/thumbnail", rendered.thumbnail, ["GET"], "series-thumbnail", READ),
        (INSTANCE + "/thumbnail", rendered.thumbnail, ["GET"], "instance-thumbnail", READ),
        (FRAMES + "/thumbnail", rendered.thumbnail, ["GET"], "frames-thumbnail", READ),
        (INSTANCE + "/bulkdata/{path:path}", wado.bulkdata, ["GET"], "bulkdata", READ),
        ("/wado", wado_uri.wado, ["GET"], "wado-uri", READ),
        (STUDY, delete.delete, ["DELETE"], "delete-study", DELETE),
        (SERIES, delete.delete, ["DELETE"], "delete-series", DELETE),
        (INSTANCE, delete.delete, ["DELETE"], "delete-instance", DELETE),
        ("/changefeed", changefeed.changefeed, ["GET"], "changefeed", READ),
        ("/changefeed/latest", changefeed.latest, ["GET"], "changefeed-latest", READ),
        ("/export", export.export, ["POST"], "export", EXPORT),
        ("/operations/{operation}", operations.get, ["GET"], "operation", READ),
        ("/fhir/status", fhir_sync.status, ["GET"], "fhir-status", ADMIN),
        ("/fhir/failures", fhir_sync.failures, ["GET"], "fhir-failures", ADMIN),
        ("/extendedquerytags", extended_tags.add, ["POST"], "extended-tags-add", MANAGE_TAGS),
        ("/extendedquerytags", extended_tags.listing, ["GET"], "extended-tags", READ),
        (TAG, extended_tags.get, ["GET"], "extended-tag", READ),
        (TAG, extended_tags.update, ["PATCH"], "extended-tag-update", MANAGE_TAGS),
        (TAG, extended_tags.delete, ["DELETE"], "extended-tag-delete", MANAGE_TAGS),
        (TAG + "/errors", extended_tags.errors, ["GET"], "extended-tag-errors", READ),
        ("/api.json", openapi.api_json, ["GET"], "openapi-json", READ),
        ("/api.yaml", openapi.api_yaml, ["GET"], "openapi-yaml", READ),
        ("/workitems", workitems.search, ["GET"], "workitems-search", READ),
        ("/workitems", workitems.create, ["POST"], "workitem-create", WRITE),
        (WORKITEM, workitems.retrieve, ["GET"], "workitem", READ),
        (WORKITEM, workitems.update, ["POST"], "workitem-update", WRITE),
        (WORKITEM + "/state", workitems.change_state, ["PUT"], "workitem-state", WRITE),
        (WORKITEM + "/cancelrequest", workitems.cancel_request, ["POST"], "workitem-cancel", WRITE),
        (SUBSCRIBER, workitem_events.subscribe, ["POST"], "workitem-subscribe", WRITE),
        (SUBSCRIBER, workitem_events.unsubscribe, ["DELETE"], "workitem-unsubscribe", WRITE),
        (SUBSCRIBER + "/suspend", workitem_events.suspend, ["POST"], "workitem-suspend", WRITE),
        # the event channel asked for without a WebSocket upgrade: 426
        ("/subscribers/{aetitle}", workitem_events.upgrade_required, ["GET"], "events-http", READ),
        ("/events", event_stream.stream, ["GET"], "event-stream", READ),
        ("/subscriptions", subscriptions.create, ["POST"], "subscription-create", ADMIN),
        ("/subscriptions", subscriptions.listing, ["GET"], "subscriptions", ADMIN),
        (WEBHOOK, subscriptions.get, ["GET"], "subscription", ADMIN),
        (WEBHOOK, subscriptions.update, ["PATCH"], "subscription-update", ADMIN),
        (WEBHOOK, subscriptions.delete, ["DELETE"], "subscription-delete", ADMIN),
        (WEBHOOK + "/deadletters", subscriptions.deadletters, ["GET"], "deadletters", ADMIN),
        (
            WEBHOOK + "/deadletters/{event}/replay",
            subscriptions.replay,
            ["POST"],
            "deadletter-replay",
            ADMIN,
        ),
        ("/audit", audit.entries, ["GET"], "audit", ADMIN),
        ("/partitions", partitions.listing, ["GET"], "partitions", READ),
        ("/deleted/$purge", deleted.purge, ["POST"], "purge-deleted", ADMIN),
    ]
    out: list[BaseRoute] = [
        ActionRoute("/health/check", health.health, ["GET"], "health", None),
        ActionRoute("/metrics", metrics.metrics, ["GET"], "metrics", ADMIN),
        # WADO-URI clients are configured with one URL, usually without an API version
        ActionRoute("/wado", wado_uri.wado, ["GET"], "wado-uri", READ),
    ]
    for path, endpoint, methods, name, action in table:
        out += _versioned(path, endpoint, methods, name, action)
    # the UPS event channel (PS3.18 11.13), in each data partition too (web/partitions); it
    # checks the read data action and the partition itself
    channel = "/subscribers/{aetitle}"
    out += [
        WebSocketRoute(f"/v{n}{channel}", workitem_events.channel, name=f"v{n}-events")
        for n in VERSIONS
    ]
    if partitions.has_partitions(channel):
        out += [
            WebSocketRoute(
                f"/v{n}/partitions/{{partition}}{channel}",
                workitem_events.channel,
                name=f"v{n}-partition-events",
            )
            for n in VERSIONS
        ]
    return out


def viewer_root(settings: Settings) -> str | None:
    """The DICOMweb root the viewer's browser reaches: of ``--public-url``, else None (the
    page's own origin)."""
    return settings.public_url.rstrip("/") + "/v2" if settings.public_url else None


def create_app(
    settings: Settings,
    archive: Archive,
    background: Callable[[], Awaitable[None]] | None = None,
    recover: bool = True,
) -> Starlette:
    """The app over ``archive``; ``background()`` (the node's job runners) runs beside it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await archive.start(recover)
        if recover:  # else the supervisor checked, once for all its server processes
            await partitions.refuse_when_off(archive.index, settings.data_partitions)
        instruments.alive("http")  # summed with the other processes' metrics from now on
        worker = asyncio.create_task(background()) if background else None
        try:
            yield
        finally:
            if worker:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            await archive.close()
            exposition.leave()

    table = routes()
    app = Starlette(
        routes=table,
        lifespan=lifespan,
        middleware=forwarded(settings.forwarded_allow_ips)
        + (console(settings) if settings.console else [])
        + viewer(settings.viewer, viewer_root(settings), settings.viewer_config, table)
        + api_versions()
        + cors(settings.cors)
        + audit.audit(archive.audit, table)
        + limits(settings.request_limits)
        + authentication(settings.auth),
        exception_handlers={
            DicomhubError: errors.on_dicomhub_error,
            HTTPException: errors.on_http_exception,
            ClientDisconnect: errors.on_disconnect,
            Exception: errors.on_unexpected,
        },
    )
    app.router = IndexedRouter(table, lifespan=lifespan)  # Starlette's, with fewer tries
    app.state.archive = archive
    app.state.public_url = settings.public_url  # what web/common.base_url names
    app.state.search = settings.archive.search  # QIDO's limits
    app.state.ingest = settings.ingest  # read by every STOW request
    app.state.data_partitions = settings.data_partitions
    app.state.partition_names = set()  # the partitions this process has seen (web/partitions)
    return app
