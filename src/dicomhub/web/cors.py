"""CORS for browser viewers (OHIF and the like served from another origin)."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from dicomhub.settings_groups import Cors

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
REQUEST_HEADERS = [
    "Accept",
    "Authorization",
    "Content-Type",
    "If-None-Match",
    "Range",
    "X-Request-Id",
]
# What a page may read of a response (beyond the CORS-safelisted headers)
EXPOSED = [
    "ETag",
    "Last-Modified",
    "Location",
    "Content-Location",
    "Content-Range",
    "Warning",
    "Retry-After",
    "X-Request-Id",  # the request's id, as the audit log and the logs name it
]


def cors(settings: Cors) -> list[Middleware]:
    """The CORS middleware of ``--cors-origins``; none when it is empty."""
    origins = [o.strip().rstrip("/") for o in settings.origins.split(",") if o.strip()]
    if not origins:
        return []
    if "*" in origins and settings.allow_credentials:
        raise ValueError(
            "cors_allow_credentials cannot be used with cors_origins '*': name the origins"
        )
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=settings.allow_credentials,
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            expose_headers=EXPOSED,
            max_age=settings.max_age,
        )
    ]
