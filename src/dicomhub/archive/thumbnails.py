"""Thumbnails of studies, series, instances and frames (PS3.18 10.4.1.1.4), cached.

A study or series is shown by a representative instance: the middle one of its first series
with pixel data. The default thumbnail of each instance (default size, each media type) is
rendered once and kept in the blob store beside the instance, under a key derived from the
instance's blob key (so never from UIDs); the blob-cleanup job deletes it with the instance.
"""

from __future__ import annotations

import logging

from dicomhub.archive.pixels import RenderService, has_pixels
from dicomhub.archive.retrieve import RetrieveService
from dicomhub.dicom import render
from dicomhub.errors import NotFound, Unavailable
from dicomhub.model import Scope, StoredInstance, thumbnail_keys
from dicomhub.storage.protocols import BlobStore

log = logging.getLogger(__name__)


class ThumbnailService:
    def __init__(
        self,
        retrieve: RetrieveService,
        renderer: RenderService,
        blobs: BlobStore,
        size: int,
    ):
        self.retrieve = retrieve
        self.renderer = renderer
        self.blobs = blobs
        self.default = render.Viewport(size, size)

    async def of(self, scope: Scope, frame: int | None, params: render.Params) -> bytes:
        instance = representative(await self.retrieve.instances(scope))
        cacheable = frame is None and params == self.params(params.media)
        key = thumbnail_keys(instance.blob_key)[params.media] if cacheable else None
        if key is not None:
            try:
                return await self.blobs.read(key)
            except NotFound:
                pass
        image = await self.renderer.frames(instance, [frame or 1], params)
        if key is not None:
            await self._keep(key, image)
        return image

    def params(self, media: str) -> render.Params:
        """What a thumbnail request without parameters means."""
        return render.Params(media=media, viewport=self.default)

    async def _keep(self, key: str, image: bytes) -> None:
        """Cache the image; a failure (or a concurrent request's copy) only costs a render."""
        try:
            await self.blobs.put(key, image)
        except (Unavailable, OSError) as exc:
            log.info("thumbnail %s not cached: %s", key, exc)


def representative(instances: list[StoredInstance]) -> StoredInstance:
    """The middle instance with pixel data of the first series that has any."""
    with_pixels = [i for i in instances if has_pixels(i)]
    if not with_pixels:
        raise NotFound("nothing here has pixel data to show as a thumbnail")
    series = with_pixels[0].id.series
    members = [i for i in with_pixels if i.id.series == series]
    return members[len(members) // 2]
