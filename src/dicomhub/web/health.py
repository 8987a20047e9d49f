"""GET /health/check: Microsoft's health document; 503 names the failing dependency."""

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub.web.common import archive


async def health(request: Request) -> JSONResponse:
    results = await archive(request).health()
    details = [
        {
            "name": name,
            "status": "Healthy" if error is None else "Unhealthy",
            "description": error or f"{name} is reachable",
        }
        for name, error in results
    ]
    healthy = all(error is None for _, error in results)
    return JSONResponse(
        {"overallStatus": "Healthy" if healthy else "Unhealthy", "details": details},
        status_code=200 if healthy else 503,
        headers={} if healthy else {"Retry-After": "5"},
    )
