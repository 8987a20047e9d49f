"""The ASGI application: routes of every API version over one archive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route

from dicomhub.archive.archive import Archive
from dicomhub.dicom.levels import Level
from dicomhub.errors import DicomhubError
from dicomhub.settings import Settings
from dicomhub.web import (
    changefeed,
    delete,
    errors,
    extended_tags,
    fhir,
    health,
    openapi,
    operations,
    qido,
    rendered,
    stow,
    wado,
)
from dicomhub.web.auth import authentication
from dicomhub.web.cors import cors
from dicomhub.web.limits import limits

VERSIONS = (1, 2)
STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{sop}"


def _versioned(path: str, endpoint, methods: list[str], name: str) -> list[Route]:
    routes = []
    for number in VERSIONS:

        async def bound(request, _endpoint=endpoint, _number=number):
            request.scope["route_version"] = _number
            return await _endpoint(request)

        routes.append(Route(f"/v{number}{path}", bound, methods=methods, name=f"v{number}-{name}"))
    return routes


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
        out.append((path + "/count", qido.count(level), ["GET"], name + "-count"))
        out.append((path, qido.search(level), ["GET"], name))
    return out


def routes() -> list[BaseRoute]:
    table = [
        *_search_routes(),
        ("/studies", stow.store, ["POST"], "stow"),
        (STUDY, stow.store, ["POST"], "stow-study"),
        (STUDY, wado.retrieve, ["GET"], "study"),
        (SERIES, wado.retrieve, ["GET"], "series"),
        (INSTANCE, wado.retrieve, ["GET"], "instance"),
        (STUDY + "/metadata", wado.metadata, ["GET"], "study-metadata"),
        (SERIES + "/metadata", wado.metadata, ["GET"], "series-metadata"),
        (INSTANCE + "/metadata", wado.metadata, ["GET"], "instance-metadata"),
        (INSTANCE + "/frames/{frames}", wado.frames, ["GET"], "frames"),
        (STUDY + "/rendered", rendered.rendered, ["GET"], "study-rendered"),
        (SERIES + "/rendered", rendered.rendered, ["GET"], "series-rendered"),
        (INSTANCE + "/rendered", rendered.rendered, ["GET"], "instance-rendered"),
        (INSTANCE + "/frames/{frames}/rendered", rendered.rendered, ["GET"], "frames-rendered"),
        (STUDY + "/thumbnail", rendered.thumbnail, ["GET"], "study-thumbnail"),
        (SERIES + "/thumbnail", rendered.thumbnail, ["GET"], "series-thumbnail"),
        (INSTANCE + "/thumbnail", rendered.thumbnail, ["GET"], "instance-thumbnail"),
        (INSTANCE + "/frames/{frames}/thumbnail", rendered.thumbnail, ["GET"], "frames-thumbnail"),
        (INSTANCE + "/bulkdata/{path:path}", wado.bulkdata, ["GET"], "bulkdata"),
        (STUDY, delete.delete, ["DELETE"], "delete-study"),
        (SERIES, delete.delete, ["DELETE"], "delete-series"),
        (INSTANCE, delete.delete, ["DELETE"], "delete-instance"),
        ("/changefeed", changefeed.changefeed, ["GET"], "changefeed"),
        ("/changefeed/latest", changefeed.latest, ["GET"], "changefeed-latest"),
        ("/operations/{operation}", operations.get, ["GET"], "operation"),
        ("/fhir/status", fhir.status, ["GET"], "fhir-status"),
        ("/fhir/failures", fhir.failures, ["GET"], "fhir-failures"),
        ("/extendedquerytags", extended_tags.add, ["POST"], "extended-tags-add"),
        ("/extendedquerytags", extended_tags.listing, ["GET"], "extended-tags"),
        ("/extendedquerytags/{tag}", extended_tags.get, ["GET"], "extended-tag"),
        ("/extendedquerytags/{tag}", extended_tags.update, ["PATCH"], "extended-tag-update"),
        ("/extendedquerytags/{tag}", extended_tags.delete, ["DELETE"], "extended-tag-delete"),
        ("/extendedquerytags/{tag}/errors", extended_tags.errors, ["GET"], "extended-tag-errors"),
        ("/api.json", openapi.api_json, ["GET"], "openapi-json"),
        ("/api.yaml", openapi.api_yaml, ["GET"], "openapi-yaml"),
    ]
    out: list[BaseRoute] = [
        Route("/health/check", health.health, methods=["GET"]),
        Route("/metrics", fhir.metrics, methods=["GET"]),
    ]
    for path, endpoint, methods, name in table:
        out += _versioned(path, endpoint, methods, name)
    return out


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
        worker = asyncio.create_task(background()) if background else None
        try:
            yield
        finally:
            if worker:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            await archive.close()

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        middleware=cors(settings) + limits(settings) + authentication(settings),
        exception_handlers={
            DicomhubError: errors.on_dicomhub_error,
            HTTPException: errors.on_http_exception,
            ClientDisconnect: errors.on_disconnect,
            Exception: errors.on_unexpected,
        },
    )
    app.state.archive = archive
    app.state.settings = settings
    return app
