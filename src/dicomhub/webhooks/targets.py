"""Which URLs a subscription may target: http(s) only, and not (unless the operator allows it)
a host on loopback, private, link-local or other non-public networks, so that the subscription
API cannot be used to reach services inside the network (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class TargetRefused(ValueError):
    """The URL may not be a webhook target; the message says why."""


def check_url(url: str) -> str:
    """The URL's host; raises TargetRefused for anything but an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("a webhook URL is an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise TargetRefused("a webhook URL carries no credentials (use the signing secret)")
    del port
    return parts.hostname


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_target(url: str, allow_private: bool) -> None:
    """Raise TargetRefused when ``url`` is no http(s) URL, or (unless ``allow_private``) when
    its host resolves to an address that is not public (every address it resolves to must be),
    or does not resolve."""
    host = check_url(url)
    if allow_private:
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"the host {host} does not resolve: {exc}") from None
    for *_, address in found:
        if not _public(address[0]):
            raise TargetRefused(
                f"the host {host} resolves to {address[0]}, a loopback, private or otherwise "
                "non-public address (allowed only with --webhook-allow-private true)"
            )
