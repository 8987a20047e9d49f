"""What a trusted reverse proxy says about the original request: the client's address, the
scheme and the host it used (``Forwarded``, RFC 7239, or ``X-Forwarded-For/-Proto/-Host``).

Applied to the request before anything reads it, and only when the connection comes from an
address in ``--forwarded-allow-ips``: then RetrieveURL and BulkDataURI values name the address
the client used (behind nginx's default configuration, which does not pass ``Host``, they would
name the internal one), and the audit log records the caller, not the proxy. From anyone else
the headers are ignored. ``--public-url``, when set, still wins for the URLs.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?\Z")
_SCHEMES = {"http", "https"}
_SAYING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


class TrustedProxies:
    def __init__(self, allowed: str):
        entries = [e.strip() for e in allowed.split(",") if e.strip()]
        self.anyone = "*" in entries
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if e != "*"]

    def __contains__(self, address: str | None) -> bool:
        if self.anyone:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


class ForwardedHeaders:
    def __init__(self, app: ASGIApp, allow_ips: str):
        """``allow_ips``: the proxies believed (``--forwarded-allow-ips``)."""
        self.app = app
        self.trusted = TrustedProxies(allow_ips)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if (
            scope["type"] == "http"
            and client
            and any(name.lower() in _SAYING for name, _ in scope["headers"])
            and client[0] in self.trusted
        ):
            scope = self._applied(scope)
        await self.app(scope, receive, send)

    def _applied(self, scope: Scope) -> Scope:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if "forwarded" in headers:  # RFC 7239: one element per proxy, the nearest last
            elements = [_parameters(e) for e in headers["forwarded"].split(",")]
            said = dict(elements[-1])
            said["for"] = self._client([e.get("for", "") for e in elements]) or ""
        else:  # the older headers, a value per proxy, the nearest last
            said = {
                "proto": _last(headers.get("x-forwarded-proto")),
                "host": _last(headers.get("x-forwarded-host")),
                "for": self._client((headers.get("x-forwarded-for") or "").split(",")),
            }
        said = {k: v for k, v in said.items() if v}
        scope = dict(scope)
        proto = said.get("proto", "").lower()
        if proto in _SCHEMES:
            scope["scheme"] = proto
        host = said.get("host", "")
        if _HOST.match(host):
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"host"]
            scope["headers"].append((b"host", host.encode("latin-1")))
        if "for" in said:
            scope["client"] = (said["for"], 0)
        return scope

    def _client(self, chain: list[str]) -> str | None:
        """The original client: the nearest address of the chain that is not a trusted proxy
        (obfuscated and unknown ones, RFC 7239 section 6, say nothing)."""
        addresses = [a for a in map(_address, chain) if a]
        for address in reversed(addresses):
            if address not in self.trusted:
                return address
        return addresses[0] if addresses else None


def _address(node: str) -> str | None:
    """An address without its port: ``192.0.2.1:80``, ``[2001:db8::1]:80``, ``2001:db8::1``."""
    node = node.strip().strip('"')
    if node.startswith("["):
        node = node[1:].partition("]")[0]
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None


def _last(value: str | None) -> str | None:
    return value.split(",")[-1].strip() if value else None


def _parameters(element: str) -> dict[str, str]:
    out = {}
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep:
            out[name.strip().lower()] = value.strip().strip('"')
    return out


def forwarded(allow_ips: str) -> list[Middleware]:
    return [Middleware(ForwardedHeaders, allow_ips=allow_ips)]
