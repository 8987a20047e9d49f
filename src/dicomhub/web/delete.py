"""DELETE routes (non-standard, as Microsoft's server): study, series or instance."""

from starlette.requests import Request
from starlette.responses import Response

from dicomhub.web.common import archive, scope_of


async def delete(request: Request) -> Response:
    await archive(request).delete.delete(scope_of(request))
    return Response(status_code=204)
