"""Network addresses given on the command line or in settings: ``HOST:PORT`` and ``[V6]:PORT``."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from modelplane.whole_numbers import is_whole_number

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens. Used with fullmatch (a pattern
# ending in "$" would also match before a final newline); the length is checked apart.
_HOSTNAME = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_MAX_HOSTNAME_CHARS = 253


class AddressError(ValueError):
    """An address that cannot be used, with a message that says why."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``; port 0 (any free port) only when allowed."""
    if not text or text != text.strip():
        raise AddressError(f"{text!r} is not an address: expected HOST:PORT, e.g. 127.0.0.1:9004")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise AddressError(f"{text!r} is not an address: expected [IPV6]:PORT, e.g. [::1]:9004")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise AddressError(f"{text!r} is not an address: expected HOST:PORT, e.g. 127.0.0.1:9004")
        if ":" in host:
            raise AddressError(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:9004")
        if len(host) > _MAX_HOSTNAME_CHARS or not _HOSTNAME.fullmatch(host):
            raise AddressError(f"{text!r}: {host!r} is not a valid host name or IP address")
    if not is_whole_number(port_text):
        raise AddressError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise AddressError(f"{text!r}: port {port} is out of range ({lowest}-65535)")
    return Address(host, port)
