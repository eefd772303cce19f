"""Command-line flags for transport security, shared by every command that serves or calls gRPC."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelplane.transport import TransportSecurity


def add_tls_flags(parser: argparse.ArgumentParser, *, server: bool) -> None:
    group = parser.add_argument_group("transport security")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext gRPC on non-loopback addresses (loopback is always allowed plaintext)",
    )
    who = "this server's" if server else "the client's (for mutual TLS)"
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help=f"{who} certificate chain")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help=f"{who} private key")
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="CA that client certificates must chain to (enables mutual TLS)"
        if server
        else "CA that the server's certificate must chain to",
    )


def security_from(options: argparse.Namespace) -> TransportSecurity:
    return TransportSecurity(
        insecure=options.insecure,
        cert_file=options.tls_cert,
        key_file=options.tls_key,
        ca_file=options.tls_ca,
    )
