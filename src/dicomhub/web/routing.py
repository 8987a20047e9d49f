"""Routing without trying every route: Starlette's router tries its routes in order until one
matches (about 250 here, with each API version and data partition; the STOW route is the 53rd,
the frames route the 97th). ``IndexedRouter`` tries only the routes whose literal first path
segments agree with the request's, in the same order, so the route it picks is the one
Starlette's scan would pick first. Anything else (no full match: 405, a slash redirect, 404;
the lifespan) is left to Starlette's router, unchanged."""

from __future__ import annotations

from starlette.routing import BaseRoute, Match, Router, get_route_path
from starlette.types import Receive, Scope, Send

DEPTH = 2  # literal leading segments a route is filed under


def literal_prefix(path: str) -> tuple[str, ...]:
    """The leading segments of a route's path template before its first parameter, at most
    ``DEPTH`` of them."""
    out: list[str] = []
    for segment in path.split("/")[1 : DEPTH + 1]:
        if "{" in segment:
            break
        out.append(segment)
    return tuple(out)


class IndexedRouter(Router):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # each route's literal prefix -> the routes, in order, whose literal prefix it starts
        # with (a bounded set of keys: a request's own segments never become one). Routes
        # added later come after all of these, so a full match found here is still the one
        # the whole scan would find first, and the scan finds them otherwise.
        prefixes = [literal_prefix(getattr(r, "path", "")) for r in self.routes]
        self._index = {
            key: [r for r, p in zip(self.routes, prefixes, strict=True) if key[: len(p)] == p]
            for key in set(prefixes)
        }

    def candidates(self, path: str) -> list[BaseRoute]:
        """The routes, in order, that may match ``path``: those filed under its first
        segments, or every route when no route names them."""
        return self._index.get(tuple(path.split("/")[1 : DEPTH + 1]), self.routes)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            for route in self.candidates(get_route_path(scope)):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)
