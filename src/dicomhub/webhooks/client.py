"""Delivering one event: a signed POST with a timeout; any 2xx answer is success, anything else
(a redirect too: not followed) a failure. Connections to a receiver are kept open between
events: an answer's body is read (and dropped) when its length says it is small, since a
connection whose answer was left unread cannot carry the next request."""

from __future__ import annotations

import httpx

from dicomhub import __version__
from dicomhub.clock import utcnow
from dicomhub.webhooks import signing
from dicomhub.webhooks.events import MEDIA_TYPES

ANSWER_READ = 16 * 1024  # the longest answer read to keep its connection (others: closed)


class DeliveryFailed(Exception):
    """The receiver did not take the event (an error answer, a timeout, no connection)."""


class WebhookClient:
    def __init__(self, timeout: float):
        # no redirects (a redirect could lead to an address the target check refused), no
        # proxy from the environment, no cookies kept between receivers
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": f"dicomhub/{__version__} webhooks"},
        )

    async def send(self, url: str, secret: str, id: str, schema: str, body: bytes) -> None:
        """POST ``body`` signed with ``secret``; raises DeliveryFailed."""
        headers = signing.headers(secret, id, int(utcnow().timestamp()), body)
        headers["content-type"] = MEDIA_TYPES[schema]
        try:
            # an answer's body is read only when it says it is short, and never kept: a
            # receiver cannot make this process hold one
            async with self._client.stream("POST", url, content=body, headers=headers) as answer:
                status = answer.status_code
                length = answer.headers.get("content-length", "")
                if length.isdigit() and 0 < int(length) <= ANSWER_READ:
                    async for _ in answer.aiter_raw():
                        pass
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        finally:
            self._client.cookies.clear()
        if not 200 <= status < 300:
            raise DeliveryFailed(f"the receiver answered {status}")

    async def close(self) -> None:
        await self._client.aclose()
