"""Authorisation: the roles a token's claim names grant data actions (Microsoft's set), through a
role file in Microsoft's roles.json format; every route declares the one action it needs.

A role grants its ``dataActions`` (``*``: all) less its ``notDataActions``; a caller holds the
union of what its known roles grant. Unknown role names grant nothing. A role's ``scopes`` say
where: ``/`` everywhere, ``/partitions/{name}`` only in that data partition (its routes of
studies; the default partition's are the routes without a partition), so that a reader of one
partition is refused (403) in another and on the server's own routes.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from dicomhub.errors import Forbidden
from dicomhub.model import ACTIONS, PARTITION_NAME

ALL = "*"
EVERYWHERE = "/"

Grants = dict[str, frozenset[str]]  # where ("/" or a partition's name) -> the actions granted


class Roles:
    def __init__(self, grants: dict[str, Grants], claim: str):
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

    def actions(self, names: list[str]) -> Grants:
        """What roles ``names`` grant, by where (``/``: everywhere, else a partition)."""
        out: dict[str, frozenset[str]] = {}
        for name in names:
            for where, actions in self.grants.get(name, {}).items():
                out[where] = out.get(where, frozenset()) | actions
        return out


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
        granted = _actions(role.get("dataActions"), name, "dataActions")
        denied = _actions(role.get("notDataActions", []), name, "notDataActions")
        grants[name] = dict.fromkeys(
            _scopes(role.get("scopes", [EVERYWHERE]), name), frozenset(granted - denied)
        )
    return grants


def _scopes(values: Any, role: str) -> list[str]:
    """Where a role grants: ``/`` or the names of data partitions."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"role {role!r}: scopes must be a non-empty list")
    out = []
    for value in values:
        name = value.removeprefix("/partitions/") if isinstance(value, str) else ""
        if value != EVERYWHERE and (name == value or not PARTITION_NAME.fullmatch(name)):
            raise ValueError(
                f'role {role!r}: a scope is "/" or "/partitions/{{name}}", not {value!r}'
            )
        out.append(EVERYWHERE if value == EVERYWHERE else name)
    return out


def _actions(values: Any, role: str, key: str) -> set[str]:
    if not isinstance(values, list):
        raise ValueError(f"role {role!r}: {key} must be a list")
    unknown = [v for v in values if v != ALL and v not in ACTIONS]
    if unknown:
        raise ValueError(
            f"role {role!r}: unknown {key} {unknown}; known: {', '.join((ALL, *ACTIONS))}"
        )
    return set(ACTIONS) if ALL in values else set(values)


def authorize(scope: dict, action: str | None, partition: str | None = None) -> None:
    """Raise Forbidden unless the request's principal holds ``action`` (None: any caller;
    no principal: authentication is off, so nothing is checked) everywhere, or in data
    ``partition`` (a route of a partition's; None: a route of the server's own)."""
    principal = scope.get("state", {}).get("principal")
    if action is None or principal is None:
        return
    granted = principal.actions
    if action in granted.get(EVERYWHERE, ()) or action in granted.get(partition, ()):
        return
    roles = ", ".join(principal.roles) or "none"
    where = f" in partition {partition}" if partition is not None else ""
    raise Forbidden(f"the caller's roles ({roles}) do not grant the {action!r} data action{where}")


def granted_partitions(scope: dict, action: str) -> frozenset[str] | None:
    """Where the request's principal holds ``action``: None everywhere (or authentication is
    off), else the data partitions its partition-scoped roles grant it in (maybe none)."""
    principal = scope.get("state", {}).get("principal")
    if principal is None:
        return None
    granted = principal.actions
    if action in granted.get(EVERYWHERE, ()):
        return None
    return frozenset(where for where, actions in granted.items() if action in actions)


def authorize_somewhere(scope: dict, action: str) -> None:
    """Raise Forbidden unless the principal holds ``action`` everywhere or in some partition:
    a route whose answer is narrowed to the caller's partitions (``granted_partitions``)."""
    if granted_partitions(scope, action) == frozenset():
        authorize(scope, action)  # raises, naming the roles
