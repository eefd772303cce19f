"""The policy file: which identities and groups hold which roles, each grant optionally limited to namespaces and
name prefixes. YAML, like the project's manifests; read again when it changes (reloading_file.py).

    identities:
      spiffe://prod.example/gateway: [gateway]
      spiffe://prod.example/agent: [agent]
      alice:
        - viewer
        - role: operator
          namespaces: [team-a]        # only requests whose kubernetesMeta.namespace is team-a
          namePrefixes: [team-a-]     # and whose model/pipeline/experiment name starts with team-a-
    groups:
      platform: [operator, viewer]

A grant limited to namespaces or prefixes covers only requests that name a resource within them: a request that
does not say (a status stream of everything, an unload without kubernetesMeta, ServerNotify) needs an unlimited
grant of the role.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelplane import bounded_yaml
from modelplane.auth.access_table import Resource, Role
from modelplane.auth.reloading_file import AuthFileError, ReloadingFile
from modelplane.auth.tokens import NAME

__all__ = ["Grant", "Policy", "PolicyFile", "parse_policy"]

MAX_GRANTS = 10_000
_ROLES = ", ".join(role.value for role in Role)


@dataclass(frozen=True, slots=True)
class Grant:
    role: Role
    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    name_prefixes: tuple[str, ...] = ()  # empty: every name

    def covers(self, resource: Resource) -> bool:
        if self.namespaces and resource.namespace not in self.namespaces:
            return False
        return not self.name_prefixes or resource.name.startswith(self.name_prefixes)


@dataclass(frozen=True, slots=True)
class Policy:
    identities: Mapping[str, tuple[Grant, ...]]
    groups: Mapping[str, tuple[Grant, ...]]

    def grants(self, identity: str, groups: frozenset[str]) -> tuple[Grant, ...]:
        found = list(self.identities.get(identity, ()))
        for group in sorted(groups):
            found.extend(self.groups.get(group, ()))
        return tuple(found)

    def roles(self, identity: str, groups: frozenset[str]) -> frozenset[str]:
        return frozenset(grant.role.value for grant in self.grants(identity, groups))


EMPTY_POLICY = Policy({}, {})


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise AuthFileError(f"{what} must be a list of non-empty strings")
    return list(value)


def _grant(item: Any, at: str) -> Grant:
    if isinstance(item, str):
        item = {"role": item}
    if not isinstance(item, dict):
        raise AuthFileError(f"{at}: a grant is a role name or a mapping with 'role'")
    unknown = set(item) - {"role", "namespaces", "namePrefixes"}
    if unknown:
        raise AuthFileError(f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    role = item.get("role")
    try:
        granted = Role(str(role))
    except ValueError:
        raise AuthFileError(f"{at}: unknown role {str(role)[:60]!r} (roles: {_ROLES})") from None
    namespaces = _strings(item.get("namespaces", []), f"{at}: namespaces")
    prefixes = _strings(item.get("namePrefixes", []), f"{at}: namePrefixes")
    return Grant(granted, frozenset(namespaces), tuple(prefixes))


def _section(document: Mapping[str, Any], key: str, where: str) -> dict[str, tuple[Grant, ...]]:
    section = document.get(key) or {}
    if not isinstance(section, dict):
        raise AuthFileError(f"{where}: '{key}' must map names to lists of grants")
    result: dict[str, tuple[Grant, ...]] = {}
    for name, grants in section.items():
        at = f"{where}: {key}.{str(name)[:80]}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise AuthFileError(f"{at}: a name is 1-253 printable characters without spaces or commas")
        if not isinstance(grants, list):
            raise AuthFileError(f"{at}: must be a list of grants")
        result[name] = tuple(_grant(item, f"{at}[{index}]") for index, item in enumerate(grants))
    return result


def parse_policy(text: str, where: str) -> Policy:
    try:
        document = bounded_yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise AuthFileError(f"{where}{line}: not valid YAML: {getattr(error, 'problem', None) or error}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise AuthFileError(f"{where}: the policy is a mapping with 'identities' and/or 'groups'")
    unknown = set(document) - {"identities", "groups"}
    if unknown:
        raise AuthFileError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    policy = Policy(_section(document, "identities", where), _section(document, "groups", where))
    count = sum(len(grants) for grants in (*policy.identities.values(), *policy.groups.values()))
    if count > MAX_GRANTS:
        raise AuthFileError(f"{where}: {count} grants, more than {MAX_GRANTS}")
    return policy


class PolicyFile:
    """The policy in force, read again when its file changes."""

    def __init__(self, path: Path) -> None:
        self._file = ReloadingFile(path, parse_policy)

    @property
    def current(self) -> Policy:
        return self._file.current
