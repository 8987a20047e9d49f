"""POST /v{n}/deleted/$purge: remove the files of deleted instances now, without waiting for
``--delete-delay`` (an operator who needs the space back; the admin data action)."""

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub.web.audit import note
from dicomhub.web.common import archive


async def purge(request: Request) -> JSONResponse:
    removed = await archive(request).cleanup.delete_due_blobs(now=True)
    note(request, deletedBlobs=removed)
    return JSONResponse({"deletedBlobs": removed})
