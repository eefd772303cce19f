"""The one place where gRPC servers and channels are made, so TLS and plaintext rules apply everywhere.

Rules:
- TLS when a certificate is configured; mutual TLS when a client CA is also configured.
- Plaintext only when asked for explicitly (``insecure=True``) or when every address involved is a
  loopback address: a process on a laptop needs no certificates, a process on a network does.
- A server's certificate, key and client CA are reloaded when their files change (modelplane/tls_files.py):
  new connections get the new ones, established ones keep theirs. A client reads its files when it opens a
  channel, so a client that reconnects through ``open_channel`` (the agent) picks up a rotated client certificate.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from grpc import aio

from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck, AuthSettings
from modelplane.auth.client_token import ClientToken
from modelplane.auth.grpc_access import AccessInterceptor, RefusalRecorder
from modelplane.auth.grpc_client import bearer_token_interceptors
from modelplane.sizes import MAX_MESSAGE_BYTES
from modelplane.tls_files import LoadedTls, ServerTlsFiles, TlsFilesError, http_server_context

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Detect dead peers on long-lived streams (status subscriptions, agent sessions).
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
_SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Clients ping every 20 s; allow that without calls in flight.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC turns SO_REUSEPORT on by default: a second server could then bind a port this one holds and the
    # kernel would share connections between them (two schedulers behind one address). Off, a port in use is
    # an error at start, as for every other listener.
    ("grpc.so_reuseport", 0),
)


class TransportError(ValueError):
    """Transport settings that cannot work, with a message that says why."""


@dataclass(frozen=True, slots=True)
class TransportSecurity:
    """TLS settings for one side of a connection.

    For a server: ``cert_file``/``key_file`` are its identity; ``ca_file`` makes client certificates
    mandatory (mutual TLS). For a client: ``ca_file`` verifies the server; ``cert_file``/``key_file``
    are the client's identity for mutual TLS.
    """

    insecure: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.cert_file is not None or self.ca_file is not None

    def validate(self) -> None:
        if self.insecure and self.uses_tls:
            raise TransportError("--insecure cannot be combined with TLS certificate options")
        if (self.cert_file is None) != (self.key_file is None):
            raise TransportError("--tls-cert and --tls-key must be given together")
        for path in (self.cert_file, self.key_file, self.ca_file):
            if path is not None and not path.is_file():
                raise TransportError(f"TLS file {path} does not exist or is not a file")

    def check_server(self) -> None:
        """For a server: a CA (client certificates required) means nothing without the server's own certificate,
        and serving plaintext while the operator asked for mutual TLS would be worse than refusing to start."""
        if self.ca_file is not None and self.cert_file is None:
            raise TransportError("a server's CA (client certificates) needs its own certificate and key as well")

    def check_plaintext_allowed(self, addresses: Sequence[Address]) -> None:
        if self.uses_tls or self.insecure:
            return
        exposed = [str(a) for a in addresses if not a.is_loopback]
        if exposed:
            raise TransportError(
                f"refusing plaintext gRPC on non-loopback address {', '.join(exposed)}: "
                "give --tls-cert/--tls-key (and --tls-ca for mutual TLS), or --insecure to accept plaintext"
            )


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def new_server(
    interceptors: Sequence[aio.ServerInterceptor] = (),
    access: AccessCheck | None = None,
    record_refusal: RefusalRecorder | None = None,
) -> aio.Server:
    """Every gRPC server of the project is made here (with ``bind`` for its listener), so its options, among
    them the refusal of a port in use, are the same everywhere, and so is the access check (identities and
    roles, modelplane/auth), which comes first: a caller it refuses reaches nothing else. Without ``access``,
    nothing is refused, but the handlers still learn who called (modelplane.auth.caller). ``record_refusal`` is
    told of each call the check refuses, before the answer (the scheduler's audit log)."""
    checked = AccessInterceptor(access or AccessCheck(AuthSettings()), record_refusal)
    return aio.server(options=_SERVER_OPTIONS, interceptors=[checked, *interceptors])


def bind(server: aio.Server, address: Address, security: TransportSecurity) -> int:
    """Listen on ``address``; returns the bound port (useful when the port was 0).

    Raises TransportError when the address cannot be bound (in use, not local, no permission).
    """
    security.validate()
    security.check_server()
    security.check_plaintext_allowed([address])
    try:
        if security.cert_file is not None and security.key_file is not None:
            credentials = _reloading_server_credentials(security, f"gRPC server on {address}")
            port = server.add_secure_port(str(address), credentials)
        else:
            port = server.add_insecure_port(str(address))
    except RuntimeError as error:
        raise TransportError(f"cannot listen on {address}: {_why_not_bindable(address) or error}") from None
    if port == 0:
        reason = _why_not_bindable(address) or "the address is in use or not local"
        raise TransportError(f"cannot listen on {address}: {reason}")
    return port


def _server_tls_files(security: TransportSecurity, what: str) -> ServerTlsFiles:
    if security.cert_file is None or security.key_file is None:
        raise TransportError(f"{what}: TLS needs both a certificate and a key")
    try:
        return ServerTlsFiles(security.cert_file, security.key_file, security.ca_file, what)
    except TlsFilesError as error:
        raise TransportError(str(error)) from None


def _reloading_server_credentials(security: TransportSecurity, what: str) -> grpc.ServerCredentials:
    """Server credentials that follow the TLS files as they change (modelplane/tls_files.py): gRPC asks the
    fetcher before every new connection's handshake."""
    files = _server_tls_files(security, what)

    def configuration(loaded: LoadedTls) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(loaded.private_key, loaded.cert_chain)], root_certificates=loaded.client_ca
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            loaded = files.refreshed()
        except Exception:  # raised into gRPC's core, it would fail the handshake: the current files still serve
            log.exception("%s: checking its TLS files failed; serving the current ones", what)
            return None
        return configuration(loaded) if loaded is not None else None

    # gRPC's stubs say the fetcher returns a configuration; its documentation says None means "no change".
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
    return grpc.dynamic_ssl_server_credentials(
        configuration(files.current), fetcher, require_client_authentication=security.ca_file is not None
    )


def _why_not_bindable(address: Address) -> str | None:
    """Why ``address`` cannot be bound, in the operating system's words (as the REST listeners report it).

    gRPC only says that binding failed; binding a plain socket the way it does (SO_REUSEADDR, no
    SO_REUSEPORT) tells why. None when that socket binds after all (the port was freed meanwhile).
    """
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        return f"cannot resolve {address.host}: {error.strerror or error}"
    for family, kind, protocol, _name, socket_address in infos:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(socket_address)
            except OSError as error:
                # "address already in use", "cannot assign requested address", "permission denied"
                return os.strerror(error.errno).lower() if error.errno else str(error)
    return None


def http_server_ssl(security: TransportSecurity) -> ssl.SSLContext | None:
    """The TLS context of an HTTP server with ``security`` (None: plaintext). A CA makes client certificates
    mandatory, as for gRPC servers. New connections get the files as they are then (modelplane/tls_files.py)."""
    security.check_server()
    if security.cert_file is None or security.key_file is None:
        return None
    # Reloaded when the files change, at the next handshake (modelplane/tls_files.py).
    return http_server_context(_server_tls_files(security, "HTTPS server"))


def http_client_ssl(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext | None:
    """The TLS context of an HTTPS client: the system's CAs, or ``ca_file``'s; a client certificate when given
    (mutual TLS). None when nothing is given, so an https:// URL uses aiohttp's default verification."""
    if ca_file is None and cert_file is None:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise TransportError(f"cannot use the TLS files: {error}") from None
    return context


def open_channel(target: Address, security: TransportSecurity, token: ClientToken | str | None = None) -> aio.Channel:
    """An asyncio channel to ``target`` with the configured security; ``token``, when given, goes with every
    call as ``authorization: Bearer`` (see modelplane/auth_flags.client_token for where it comes from), a token
    file's as it is at the time of each call."""
    if isinstance(token, str):
        token = ClientToken(token) if token else None
    interceptors = bearer_token_interceptors(token) if token is not None else None
    security.validate()
    security.check_plaintext_allowed([target])
    if security.uses_tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(security.ca_file),
            private_key=_read(security.key_file),
            certificate_chain=_read(security.cert_file),
        )
        return aio.secure_channel(str(target), credentials, options=_CHANNEL_OPTIONS, interceptors=interceptors)
    return aio.insecure_channel(str(target), options=_CHANNEL_OPTIONS, interceptors=interceptors)
