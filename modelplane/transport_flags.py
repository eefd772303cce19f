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


def add_serving_tls_flags(parser: argparse.ArgumentParser) -> None:
    """TLS of what a process serves, for processes whose --tls-* flags are about the scheduler they call."""
    group = parser.add_argument_group("serving security (plaintext is refused off loopback without --insecure)")
    group.add_argument("--serve-tls-cert", type=Path, metavar="PEM", help="this server's certificate chain")
    group.add_argument("--serve-tls-key", type=Path, metavar="PEM", help="this server's private key")
    group.add_argument(
        "--serve-tls-ca", type=Path, metavar="PEM", help="CA that client certificates must chain to (mutual TLS)"
    )


def serving_security_from(options: argparse.Namespace) -> TransportSecurity:
    return TransportSecurity(
        insecure=options.insecure,
        cert_file=options.serve_tls_cert,
        key_file=options.serve_tls_key,
        ca_file=options.serve_tls_ca,
    )


def security_from(options: argparse.Namespace) -> TransportSecurity:
    return TransportSecurity(
        insecure=options.insecure,
        cert_file=options.tls_cert,
        key_file=options.tls_key,
        ca_file=options.tls_ca,
    )
