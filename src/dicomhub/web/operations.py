"""GET /operations/{id}: a long-running operation, in Microsoft's shape (202 while it runs,
with Location; 200 once it has completed or failed). While it runs, ``results`` are those its
last checkpoint holds, for a job that keeps them there (export's counts)."""

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub.clock import isoformat
from dicomhub.web.common import archive


async def get(request: Request) -> JSONResponse:
    op = await archive(request).operations.get(request.path_params["operation"])
    body = {
        "operationId": op.id,
        "type": op.type,
        "createdTime": isoformat(op.created),
        "lastUpdatedTime": isoformat(op.last_updated),
        "status": str(op.status),
        "percentComplete": op.percent_complete,
        "resources": [],
        "results": op.results if op.finished else _running_results(op.checkpoint),
        "errors": op.errors,
    }
    if op.finished:
        return JSONResponse(body)
    return JSONResponse(body, status_code=202, headers={"Location": str(request.url)})


def _running_results(checkpoint) -> dict | None:
    return checkpoint.get("results") if isinstance(checkpoint, dict) else None
