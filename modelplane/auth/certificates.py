"""A caller's identity from its client certificate: one subject alternative name (SAN), of the first kind
configured that the certificate has.

URI SANs carry SPIFFE IDs (``spiffe://trust-domain/ns/team/sa/gateway``), DNS SANs host names, e-mail SANs people.
Which kinds count, in which order, is the operator's choice (``--auth-san-kind``; default URI, then DNS); the
common name is never used (it is not checked by name constraints). A certificate with several SANs of the chosen
kind is identified by the first: give each identity its own certificate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

__all__ = ["DEFAULT_SAN_KINDS", "SanKind", "identity_from_sans", "sans_from_peercert"]


class SanKind(StrEnum):
    URI = "uri"
    DNS = "dns"
    EMAIL = "email"


DEFAULT_SAN_KINDS: tuple[SanKind, ...] = (SanKind.URI, SanKind.DNS)

# How Python's ssl module names the kinds in getpeercert()["subjectAltName"].
_SSL_NAMES = {"URI": SanKind.URI, "DNS": SanKind.DNS, "email": SanKind.EMAIL}


def identity_from_sans(sans: Mapping[SanKind, Sequence[str]], kinds: Sequence[SanKind]) -> str | None:
    """The identity a verified certificate with ``sans`` (values by kind, in certificate order) proves."""
    for kind in kinds:
        for value in sans.get(kind, ()):
            if value:
                return value
    return None


def sans_from_peercert(peercert: Mapping[str, Any] | None) -> dict[SanKind, list[str]]:
    """The SANs of a certificate as ``ssl.SSLSocket.getpeercert()`` describes it (HTTP servers)."""
    found: dict[SanKind, list[str]] = {}
    if not peercert:
        return found
    for entry in peercert.get("subjectAltName", ()):
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] in _SSL_NAMES and isinstance(entry[1], str):
            found.setdefault(_SSL_NAMES[entry[0]], []).append(entry[1])
    return found
