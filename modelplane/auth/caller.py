"""The caller of the request being served, as the access check established it.

Set once per request by the servers' access check (the gRPC interceptor or the HTTP middleware) before the
handler runs, and read by whatever must say who asked: the audit log, the process's log lines, a handler that
refuses something only one role may do. A request served with authentication off has the anonymous caller.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["ANONYMOUS", "Caller", "CredentialKind", "current_caller", "new_request_id", "serving"]


class CredentialKind(StrEnum):
    """How the caller proved who it is."""

    CERTIFICATE = "certificate"  # a SAN of the client certificate of a mutual-TLS connection
    TOKEN = "token"  # noqa: S105 - a credential kind, not a secret: an `authorization: Bearer ...` header
    NONE = "none"  # authentication is off (loopback, or --insecure)


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Caller:
    """One request's caller.

    Invariants: ``identity`` is "" exactly when ``credential`` is NONE; ``roles`` are the roles the policy gave
    this identity and its groups when the request arrived (a later policy reload does not change them)."""

    identity: str
    credential: CredentialKind
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    peer: str = ""  # the transport's peer address, e.g. "ipv4:127.0.0.1:53122"
    request_id: str = field(default_factory=new_request_id)


ANONYMOUS = Caller(identity="", credential=CredentialKind.NONE, request_id="")

_CURRENT: contextvars.ContextVar[Caller] = contextvars.ContextVar("modelplane_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the request this task serves (ANONYMOUS outside a request)."""
    return _CURRENT.get()


@contextmanager
def serving(caller: Caller) -> Iterator[Caller]:
    """Make ``caller`` the current caller for the code run inside (the request's handler)."""
    token = _CURRENT.set(caller)
    try:
        yield caller
    finally:
        # Left in another context than the one it was entered in (ValueError): an async generator (a server
        # stream) that grpc.aio closes from another task when the stream is cancelled. That context never had this
        # caller, and the stream's own context ends with its task.
        with contextlib.suppress(ValueError):
            _CURRENT.reset(token)
