"""Extended query tags (Microsoft's API): add, list, get, enable or disable, delete, errors;
the reindex of instances stored before a tag was added; the tags a search may use."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from dicomhub.archive.operations import MAX_ATTEMPTS
from dicomhub.clock import utcnow
from dicomhub.dicom import extended_tags as et
from dicomhub.dicom import search_keys as sk
from dicomhub.dicom.extended_tags import ExtendedTag
from dicomhub.dicom.query import hex_path
from dicomhub.dicom.search_keys import Key
from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model import ExtendedTagError
from dicomhub.storage.protocols import ExtendedTagIndex

CORE_TAGS = frozenset(k.tag for k in sk.KEYS)
# Searches use the tags as this process last read them, for at most this long: a change made
# through this process shows at once, one made through another node within this time.
CACHE_SECONDS = 1.0
QUERY_STATUSES = {"enabled": "Enabled", "disabled": "Disabled"}
BATCH = 100


class ExtendedTagsService:
    def __init__(self, index: ExtendedTagIndex, max_tags: int):
        self.index = index
        self.max_tags = max_tags
        self._searchable: tuple[float, Any] | None = None  # (read at, searchable())

    async def add(self, body: Any) -> str:
        """Add the tags of a POST body; the id of their reindex operation."""
        if not isinstance(body, list) or not body:
            raise InvalidRequest("the body must be a non-empty JSON array of extended query tags")
        tags = [et.parse_new(entry, CORE_TAGS) for entry in body]
        self._searchable = None
        return await self.index.add_extended_tags(
            tags, self.max_tags, uuid.uuid4().hex, utcnow(), MAX_ATTEMPTS
        )

    async def get(self, name: str) -> ExtendedTag:
        return await self.index.extended_tag(path(name))

    async def listing(self, offset: int, limit: int) -> list[ExtendedTag]:
        return await self.index.extended_tags(offset, limit)

    async def update(self, name: str, body: Any) -> ExtendedTag:
        fields = {str(k).lower(): v for k, v in body.items()} if isinstance(body, dict) else {}
        status = QUERY_STATUSES.get(str(fields.get("querystatus", "")).lower())
        if status is None:
            raise InvalidRequest('the body must be {"queryStatus": "Enabled" or "Disabled"}')
        self._searchable = None
        return await self.index.set_extended_tag_query_status(path(name), status)

    async def delete(self, name: str) -> None:
        self._searchable = None
        await self.index.delete_extended_tag(path(name))

    async def errors(self, name: str, offset: int, limit: int) -> list[ExtendedTagError]:
        return await self.index.extended_tag_errors(path(name), offset, limit)

    async def searchable(self) -> tuple[dict[str, Key], dict[int, ExtendedTag]]:
        """The search keys of the tags a query may use, by path; and those tags, by their key
        in the index (``Key.extended``). Read at most every ``CACHE_SECONDS``."""
        now = time.monotonic()
        if self._searchable is None or now - self._searchable[0] > CACHE_SECONDS:
            tags = await self.index.searchable_tags()
            found = {t.path: t.search_key() for t in tags}, {t.key: t for t in tags}
            self._searchable = (now, found)
        return self._searchable[1]

    async def indexed_paths(self) -> frozenset[str]:
        """Paths of the searchable top-level tags (a v1 STOW validates their values)."""
        keys, _ = await self.searchable()
        return frozenset(p for p in keys if "." not in p)

    async def reindex(
        self, payload: dict, checkpoint: dict | None, progress: Callable[[int, Any], None]
    ) -> dict:
        """Index the instances stored before the tags were added, in batches, from where the
        last attempt stopped; then the tags are Ready."""
        keys = payload["tagKeys"]
        checkpoint = checkpoint or {}
        after, done = checkpoint.get("after", 0), checkpoint.get("done", 0)
        # Stores that ran while the tags were added may not have indexed them: cover what they
        # stored too (a bound fixed once, then kept by the checkpoint).
        until = checkpoint.get("until") or max(payload["until"], await self.index.settled_version())
        total = max(1, await self.index.count_until(until))
        while True:
            last, count = await self.index.reindex_batch(keys, after, until, BATCH)
            if last is None:
                break
            after, done = last, done + count
            progress(done * 100 // total, {"after": after, "done": done, "until": until})
        await self.index.mark_extended_tags_ready(keys)
        self._searchable = None
        return {"indexedInstances": done}


def path(name: str) -> str:
    """A tag's path (hex digits, dotted inside a sequence) from a path or keywords."""
    found = hex_path(name)
    if found is None:
        raise NotFound(f"extended query tag {name} not found")
    return found
