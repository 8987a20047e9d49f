"""Authorisation: the roles a token's claim names grant data actions (Microsoft's set), through a
role file in Microsoft's roles.json format; every route declares the one action it needs.

A role grants its ``dataActions`` (``*``: all) less its ``notDataActions``; a caller holds the
union of what its known roles grant. Unknown role names grant nothing.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from dicomhub.errors import Forbidden
from dicomhub.model import ACTIONS

ALL = "*"


class Roles:
    def __init__(self, grants: dict[str, frozenset[str]], claim: str):
        self.grants = grants
        self.claim = claim

    @classmethod
    def load(cls, path: str, claim: str) -> Roles:
        """The roles of the file at ``path`` (empty: the built-in roles.json); ValueError names
        what is wrong with it."""
        if path:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        else:
            text = resources.files("dicomhub.web").joinpath("roles.json").read_text("utf-8")
        try:
            return cls(_parse(json.loads(text)), claim)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"role file {path or 'roles.json'}: {exc}") from exc

    def names(self, claims: dict[str, Any]) -> list[str]:
        """The role names the token's claim holds (a list, or a space-separated string)."""
        value: Any = claims
        for part in self.claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
        return []

    def actions(self, names: list[str]) -> frozenset[str]:
        return frozenset().union(*(self.grants.get(n, frozenset()) for n in names))


def _parse(document: Any) -> dict[str, frozenset[str]]:
    roles = document["roles"] if isinstance(document, dict) and "roles" in document else None
    if not isinstance(roles, list):
        raise ValueError('it must be an object with a "roles" list')
    grants = {}
    for role in roles:
        name = role.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a role has no name: {role}")
        if name in grants:
            raise ValueError(f"role {name!r} is defined twice")
        if role.get("scopes", ["/"]) != ["/"]:
            raise ValueError(f'role {name!r}: only the scope "/" is supported')
        granted = _actions(role.get("dataActions"), name, "dataActions")
        denied = _actions(role.get("notDataActions", []), name, "notDataActions")
        grants[name] = frozenset(granted - denied)
    return grants


def _actions(values: Any, role: str, key: str) -> set[str]:
    if not isinstance(values, list):
        raise ValueError(f"role {role!r}: {key} must be a list")
    unknown = [v for v in values if v != ALL and v not in ACTIONS]
    if unknown:
        raise ValueError(
            f"role {role!r}: unknown {key} {unknown}; known: {', '.join((ALL, *ACTIONS))}"
        )
    return set(ACTIONS) if ALL in values else set(values)


def authorize(scope: dict, action: str | None) -> None:
    """Raise Forbidden unless the request's principal holds ``action`` (None: any caller;
    no principal: authentication is off, so nothing is checked)."""
    principal = scope.get("state", {}).get("principal")
    if action is None or principal is None or action in principal.actions:
        return
    roles = ", ".join(principal.roles) or "none"
    raise Forbidden(f"the caller's roles ({roles}) do not grant the {action!r} data action")
