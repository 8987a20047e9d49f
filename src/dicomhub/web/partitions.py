"""Data partitions (as Microsoft's server, its reference section 10): with ``--data-partitions
true``, the routes ``has_partitions`` names also exist under ``/v{n}/partitions/{name}/``, each
name its own UID namespace; the routes without it are the default partition's
(``Microsoft.Default``). A store of instances to a new name creates the partition; ``GET
/v{n}/partitions`` lists them. Off (the default), every partition route answers 400, as
Microsoft's does (a partition's UPS event channel, a WebSocket, refuses the handshake so).
Roles may be limited to partitions (web/access), DIMSE callers given one (dimse/callers).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from dicomhub.errors import InvalidRequest
from dicomhub.model import DEFAULT_PARTITION, PARTITION_NAME
from dicomhub.web.common import PARTITION, archive

# The routes a data partition has (by path, after /v{n}): studies' STOW, upsert, QIDO, WADO,
# rendered images, delete and bulk update, export, and workitems' Push, Pull, Watch and Event
# (subscriptions and the event channel at /subscribers/{AETitle}). Change feed, extended query
# tags and operations are the server's (as in Microsoft's).
PREFIXES = ("/studies", "/series", "/instances", "/export", "/workitems", "/subscribers/")


def has_partitions(path: str) -> bool:
    """Whether the route at ``path`` (after /v{n}) also exists in each data partition."""
    return path.startswith(PREFIXES)


async def resolve(request: HTTPConnection, create: bool) -> None:
    """Check the request's partition (its path's ``{partition}``) and keep it in the scope
    for the route: a valid name of an existing partition, or of one a store may create."""
    name = request.path_params["partition"]
    _enabled(request)
    if not PARTITION_NAME.fullmatch(name):
        raise InvalidRequest(
            f"partition name {name[:80]!r} is not valid: 1 to 64 characters, each a letter, a "
            "digit, '_', '.' or '-'"
        )
    if not create and name not in await _known(request, name):
        raise InvalidRequest(f"Specified PartitionName {name} does not exist")
    request.scope[PARTITION] = name


async def listing(request: Request) -> JSONResponse:
    """GET /v{n}/partitions: every partition, in the order they were created."""
    _enabled(request)
    found = await archive(request).index.partitions()
    return JSONResponse(
        [
            {
                "partitionKey": p.key,
                "partitionName": p.name,
                "createdDate": p.created.isoformat().replace("+00:00", "Z"),
            }
            for p in found
        ]
    )


async def refuse_when_off(index, enabled: bool) -> None:
    """At start-up: partitions cannot be switched off once one other than the default holds
    data (its UIDs would meet the default partition's)."""
    if enabled:
        return
    others = [p.name for p in await index.partitions() if p.name != DEFAULT_PARTITION]
    if others:
        raise SystemExit(
            "dicomhub: data partitions are off (--data-partitions false), but the index holds "
            f"partitions other than the default ({', '.join(others[:10])}): once created they "
            "cannot be switched off; start with --data-partitions true"
        )


def _enabled(request: HTTPConnection) -> None:
    if not request.app.state.data_partitions:
        raise InvalidRequest(
            "Data partitions feature is disabled: start the server with --data-partitions true"
        )


async def _known(request: HTTPConnection, name: str) -> set[str]:
    """The partitions' names, from a copy this process keeps (read again on a name it lacks:
    partitions are created, never removed)."""
    state = request.app.state
    if name not in state.partition_names:
        state.partition_names = {p.name for p in await archive(request).index.partitions()}
    return state.partition_names
