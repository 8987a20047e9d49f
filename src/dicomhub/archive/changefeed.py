"""Change feed (Microsoft's API): v1 pages by sequence, v2 by time window."""

from __future__ import annotations

from datetime import datetime

from dicomhub.model import ChangeFeedEntry
from dicomhub.storage.protocols import ChangeFeed


class ChangeFeedService:
    def __init__(self, index: ChangeFeed):
        self.index = index

    async def by_sequence(self, offset: int, limit: int, metadata: bool) -> list[ChangeFeedEntry]:
        return await self.index.changefeed(offset, limit, True, include_metadata=metadata)

    async def by_time(
        self, start: datetime | None, end: datetime | None, offset: int, limit: int, metadata: bool
    ) -> list[ChangeFeedEntry]:
        return await self.index.changefeed(offset, limit, False, start, end, metadata)

    async def latest(self, metadata: bool) -> ChangeFeedEntry | None:
        return await self.index.latest_change(metadata)
