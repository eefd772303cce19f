"""One audit line: who asked for which change to what, and what came of it.

A line holds no request body, only names: whatever a request carries (an inline storage configuration with keys,
a model's parameters) never reaches the audit log. Every text field is one printable line, cut to a limit, so a
caller cannot forge a second line or grow the log without bound whatever it sends (a refused request's name may
be megabytes: the request limits refuse it, and its audit line keeps its first characters).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelplane.auth.caller import Caller
from modelplane.bounded_text import MAX_REASON_CHARS, cut, one_line

MAX_MESSAGE_CHARS = MAX_REASON_CHARS
MAX_NAME_CHARS = 256  # a resource's name or namespace; the scheduler's own limits are lower, a refused name is not
MAX_IDENTITY_CHARS = 512  # a certificate SAN or a token's identity
MAX_ROLES = 32
MAX_ROLE_CHARS = 64
MAX_FIELD_CHARS = 128  # request id, peer address, RPC, code, credential kind, resource kind
# What json.dumps(document, separators=(",", ":")) uses, made once rather than for every line.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Resource:
    """What a mutation is about: its kind ("model", "pipeline", "experiment", "servers"), name and, when the
    request says, Kubernetes namespace ("" when not)."""

    kind: str
    name: str
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the audit log. ``code`` is the gRPC status code's name ("OK" when the call was accepted);
    ``version_before`` and ``version_after`` are the resource's live version in the scheduler around the call
    (None when there was none: never loaded, deleted, or a resource without versions)."""

    time: datetime
    request_id: str
    identity: str
    credential: str
    roles: tuple[str, ...]
    peer: str
    rpc: str
    resource: Resource | None
    version_before: int | None
    version_after: int | None
    code: str
    message: str

    def to_document(self) -> dict[str, Any]:
        return {
            "time": self.time.astimezone(UTC).isoformat(timespec="microseconds"),
            "request_id": self.request_id,
            "identity": self.identity,
            "credential": self.credential,
            "roles": list(self.roles),
            "peer": self.peer,
            "rpc": self.rpc,
            "resource": None
            if self.resource is None
            else {"kind": self.resource.kind, "name": self.resource.name, "namespace": self.resource.namespace},
            "version_before": self.version_before,
            "version_after": self.version_after,
            "code": self.code,
            "message": self.message,
        }

    def to_line(self) -> bytes:
        """The record as one JSON line, ending in a line feed (ASCII only: json escapes the rest)."""
        return (_ENCODER.encode(self.to_document()) + "\n").encode("ascii")

    @property
    def method(self) -> str:
        """The RPC's method name without its service ("LoadModel")."""
        return self.rpc.rsplit("/", 1)[-1]

    @property
    def resource_name(self) -> str:
        return self.resource.name if self.resource is not None else ""

    @classmethod
    def from_document(cls, document: object) -> AuditRecord:
        """Read a record back (``to_document``'s inverse). Raises ValueError when ``document`` is not one."""
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        resource = document.get("resource")
        if resource is not None:
            if not isinstance(resource, dict):
                raise ValueError("resource is not an object or null")
            resource = Resource(_text(resource, "kind"), _text(resource, "name"), _text(resource, "namespace"))
        roles = document.get("roles")
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise ValueError("roles is not a list of strings")
        return cls(
            time=_time(document.get("time")),
            request_id=_text(document, "request_id"),
            identity=_text(document, "identity"),
            credential=_text(document, "credential"),
            roles=tuple(roles),
            peer=_text(document, "peer"),
            rpc=_text(document, "rpc"),
            resource=resource,
            version_before=_version(document, "version_before"),
            version_after=_version(document, "version_after"),
            code=_text(document, "code"),
            message=_text(document, "message"),
        )


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _version(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{key} is not an integer or null")


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("time is not a string")
    moment = datetime.fromisoformat(value)  # raises ValueError
    if moment.tzinfo is None:
        raise ValueError("time has no UTC offset")
    return moment


# Most of a line's texts come again on every line (the RPC, the peer, the code, the kind, the credential), so a
# short text is bounded once: ten of them bounded afresh per line were ~15 us, ~1.5 % of the scheduler's CPU per
# LoadModel (bench/README.md). Only texts within their limit are kept, at most MAX_MESSAGE_CHARS each: the cache holds
# a few MB at worst.
@functools.lru_cache(maxsize=1024)
def _bounded_short(text: str, limit: int) -> str:
    return cut(one_line(text), limit)


def _bounded(text: str, limit: int) -> str:
    if not text:
        return text
    if len(text) <= limit:
        return _bounded_short(text, limit)
    return cut(one_line(text), limit)


def audit_record(
    caller: Caller,
    rpc: str,
    resource: Resource | None,
    code: str,
    message: str,
    *,
    version_before: int | None = None,
    version_after: int | None = None,
    now: datetime | None = None,
) -> AuditRecord:
    """The record of one call by ``caller``, every text bounded and on one line."""
    bounded_resource = (
        None
        if resource is None
        else Resource(
            _bounded(resource.kind, MAX_FIELD_CHARS),
            _bounded(resource.name, MAX_NAME_CHARS),
            _bounded(resource.namespace, MAX_NAME_CHARS),
        )
    )
    return AuditRecord(
        time=now if now is not None else datetime.now(UTC),
        request_id=_bounded(caller.request_id, MAX_FIELD_CHARS),
        identity=_bounded(caller.identity, MAX_IDENTITY_CHARS),
        credential=_bounded(str(caller.credential), MAX_FIELD_CHARS),
        roles=tuple(_bounded(role, MAX_ROLE_CHARS) for role in sorted(caller.roles)[:MAX_ROLES]),
        peer=_bounded(caller.peer, MAX_FIELD_CHARS),
        rpc=_bounded(rpc, MAX_FIELD_CHARS),
        resource=bounded_resource,
        version_before=version_before,
        version_after=version_after,
        code=_bounded(code, MAX_FIELD_CHARS),
        message=_bounded(message, MAX_MESSAGE_CHARS),
    )
