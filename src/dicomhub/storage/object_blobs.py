"""BlobStore on object storage: S3 and S3-compatible stores, Azure Blob, Google Cloud Storage.

One implementation over obstore (the Rust ``object_store`` crate), chosen by URL:
``s3://bucket/prefix``, ``az://container/prefix``, ``gs://bucket/prefix``. Query parameters are
the store's configuration keys (``endpoint``, ``region``, ...) or client options (``allow_http``,
``connect_timeout``, ``timeout``); credentials come from the standard environment variables
(``AWS_*``, ``AZURE_STORAGE_*``, ``GOOGLE_*``), never from the URL.

Objects up to ``multipart_threshold`` bytes are written with one conditional PUT (create only if
absent), so two nodes, or two deployments sharing a bucket by mistake, can never overwrite each
other's object. Larger objects go up in parts (the part uploads cannot be conditional); their key
is checked first. Keys come from index versions, which are never reused, so only a
misconfiguration (two indexes, one bucket) can make keys meet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl, urlparse

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, UnknownConfigurationKeyError
from obstore.store import from_url

from dicomhub.errors import InvalidRequest, NotFound, Unavailable

SCHEMES = ("s3", "az", "gs")
PART_SIZE = 8 * 1024 * 1024
_CLIENT_OPTIONS = {"allow_http", "allow_invalid_certificates", "connect_timeout", "timeout"}
_TRUE = {"1", "true", "yes", "on"}
# A store that does not answer fails a request in seconds (503), not after minutes of retries.
_RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=15)}


class ObjectBlobStore:
    def __init__(self, url: str, multipart_threshold: int = 16 * 1024 * 1024):
        parsed = urlparse(url)
        if parsed.scheme not in SCHEMES or not parsed.netloc:
            raise InvalidRequest(f"blob URL {url!r}: expected s3://, az:// or gs://bucket/prefix")
        config: dict = {}
        client: dict = {"connect_timeout": "5s"}
        for name, value in parse_qsl(parsed.query):
            if name in _CLIENT_OPTIONS:
                client[name] = value.lower() in _TRUE if name.startswith("allow") else value
            else:
                config[name] = value
        base = f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
        try:
            self._store = from_url(base, config=config, client_options=client, retry_config=_RETRY)
        except (UnknownConfigurationKeyError, BaseError, ValueError) as exc:
            raise InvalidRequest(f"blob URL {base!r}: {_first_line(exc)}") from exc
        self.multipart_threshold = multipart_threshold
        self._name = base

    async def start(self) -> None:
        return None

    async def put(self, key: str, body: bytes | Path) -> None:
        if isinstance(body, Path):
            size = (await asyncio.to_thread(body.stat)).st_size
        else:
            size = len(body)
        with self._errors(key):
            if size <= self.multipart_threshold:
                await obstore.put_async(self._store, key, body, mode="create")
            else:
                if await self._exists(key):
                    raise AlreadyExistsError(key)
                await obstore.put_async(
                    self._store, key, body, use_multipart=True, chunk_size=PART_SIZE
                )
        if isinstance(body, Path):
            await asyncio.to_thread(body.unlink, missing_ok=True)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._errors(key):
            if length is not None:
                if length <= 0:
                    return b""
                data = await obstore.get_range_async(self._store, key, start=offset, length=length)
            else:
                result = await obstore.get_async(self._store, key, options=_range(offset, None))
                data = await result.bytes_async()
        return bytes(data)

    async def stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        if length is not None and length <= 0:
            return
        with self._errors(key):
            result = await obstore.get_async(self._store, key, options=_range(offset, length))
            async for chunk in result.stream(min_chunk_size=chunk_size):
                yield bytes(chunk)

    async def local_path(self, key: str) -> Path | None:
        return None

    async def read_many(self, keys: Sequence[str]) -> list[bytes]:
        # Concurrent requests: a study of small objects is not a chain of round trips.
        return list(await asyncio.gather(*(self.read(key) for key in keys)))

    async def open_local(self, keys: Sequence[str]) -> list[BinaryIO] | None:
        return None

    async def delete(self, key: str) -> None:
        try:
            with self._errors(key):
                await obstore.delete_async(self._store, key)
        except NotFound:
            pass

    async def check(self) -> None:
        # Listing fails on a missing bucket or container and on bad credentials, where a HEAD
        # of a missing object would not tell them apart from "not found".
        with self._errors(""):
            await obstore.list(self._store, prefix=".health", chunk_size=1).collect_async()

    async def close(self) -> None:
        return None

    async def _exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def _errors(self, key: str):
        """obstore's errors in the domain's words: a missing object, or an unavailable store."""
        try:
            yield
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing") from exc
        except AlreadyExistsError as exc:
            raise Unavailable(
                "blob store",
                f"object {key} already exists in {self._name}: is another deployment writing "
                "to the same bucket and prefix?",
            ) from exc
        except (BaseError, OSError) as exc:
            raise Unavailable("blob store", _first_line(exc)) from exc


def _range(offset: int, length: int | None) -> dict:
    if length is not None:
        return {"range": (offset, offset + length)}
    return {"range": {"offset": offset}} if offset else {}


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
