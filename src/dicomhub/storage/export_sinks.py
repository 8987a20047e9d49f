"""Where an export writes: a folder or an object store (S3, Azure Blob, GCS) through obstore.

Unlike the archive's blob store, a sink overwrites: a resumed export writes again, byte for
byte, the files written after its last checkpoint (a folder gets each file through a temporary
file and a rename, an object store in one PUT, so no reader sees half a file). Options are the
store's configuration keys and client options (as in ``object_blobs``); credentials not in them
come from the provider's environment variables.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlparse

import obstore
from obstore.exceptions import BaseError, UnknownConfigurationKeyError
from obstore.store import from_url

from dicomhub.errors import InvalidRequest, Unavailable

_CLIENT_OPTIONS = {"allow_http", "allow_invalid_certificates", "connect_timeout", "timeout"}
_TRUE = {"1", "true", "yes", "on"}
_RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}


class Sink:
    def __init__(self, url: str, options: dict[str, str]):
        parsed = urlparse(url)
        try:
            if parsed.scheme == "file":
                self._store = from_url(url, mkdir=True)
            else:
                config = {k: v for k, v in options.items() if k not in _CLIENT_OPTIONS}
                client = {"connect_timeout": "5s"}
                for name in _CLIENT_OPTIONS & set(options):
                    value = options[name]
                    client[name] = value.lower() in _TRUE if name.startswith("allow") else value
                self._store = from_url(
                    url, config=config, client_options=client, retry_config=_RETRY
                )
        except (UnknownConfigurationKeyError, BaseError, ValueError, OSError) as exc:
            raise InvalidRequest(f"export destination {url}: {_first_line(exc)}") from exc
        self.url = url

    async def put(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._store, key, data)
        except (BaseError, OSError) as exc:
            raise Unavailable("export destination", f"{self.url}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
