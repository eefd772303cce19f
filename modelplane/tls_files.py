"""A server's TLS files (certificate chain, private key, client CA), reloaded when they change, without a restart.

Certificates are rotated by writing new files (cert-manager, a Kubernetes Secret's atomic symlink swap, a script).
A server asks ``ServerTlsFiles.refreshed()`` at the start of every TLS handshake: gRPC calls it through
``grpc.dynamic_ssl_server_credentials``'s fetcher, an HTTP server through its ``ssl.SSLContext``'s SNI callback
(``http_server_context``), so new connections get the new certificate (and are checked against the new CA) while
established ones, long-lived streams among them, go on with what they began with.

A change is seen by the files' (inode, size, mtime) signatures, a few ``stat`` calls per handshake. New files are
used only once they make a working server context (the key matches the certificate, the CA parses) and did not
change while they were read: a half-written file, or a certificate written before its key, keeps the last good
set and logs why, once per change; the next change is tried again.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_Signature = tuple[tuple[int, int, int], ...]


class TlsFilesError(ValueError):
    """TLS files that cannot be used; the message names the files and says why (never their content)."""


@dataclass(frozen=True, slots=True)
class LoadedTls:
    """One consistent set of a server's TLS files: their bytes (for gRPC) and a server context (for HTTP)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext


def server_context(cert_file: Path, key_file: Path, ca_file: Path | None) -> ssl.SSLContext:
    """A TLS server context from the files; a CA makes client certificates mandatory. Raises TlsFilesError."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
        if ca_file is not None:
            context.load_verify_locations(ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as error:
        raise TlsFilesError(f"cannot use the TLS files {_names(cert_file, key_file, ca_file)}: {error}") from None
    return context


def _names(*paths: Path | None) -> str:
    return ", ".join(str(path) for path in paths if path is not None)


class ServerTlsFiles:
    """A server's TLS files as last seen working. The constructor loads them (raising TlsFilesError if they do not
    work); ``refreshed()`` picks up a working change. Safe to call from any thread (gRPC's handshakes run on its
    own threads)."""

    def __init__(self, cert_file: Path, key_file: Path, ca_file: Path | None, what: str) -> None:
        self.cert_file, self.key_file, self.ca_file = cert_file, key_file, ca_file
        self.what = what
        self._lock = threading.Lock()
        signature = self._signature()
        loaded = self._load(signature)
        if loaded is None:
            raise TlsFilesError(f"{what}: the TLS files {self._files()} changed while they were read; start again")
        self._current = loaded
        self._seen = signature
        self._problem: tuple[_Signature | None, str] | None = None
        self.reloads = 0

    @property
    def current(self) -> LoadedTls:
        return self._current

    def refreshed(self) -> LoadedTls | None:
        """The newly loaded files if they changed and work, else None (the current ones stay)."""
        with self._lock:
            try:
                signature = self._signature()
            except TlsFilesError as error:
                self._keep(None, str(error))
                return None
            if signature == self._seen:
                return None
            try:
                loaded = self._load(signature)
            except TlsFilesError as error:
                self._keep(signature, str(error))
                return None
            if loaded is None:
                return None  # being written right now: look again at the next handshake
            self._current, self._seen, self._problem = loaded, signature, None
            self.reloads += 1
            log.info("%s: reloaded its TLS files %s", self.what, self._files())
            return loaded

    def _keep(self, signature: _Signature | None, reason: str) -> None:
        """Log why the files could not be used, once per change (a missing file: once per reason); the last good
        ones stay."""
        if (signature, reason) != self._problem:
            log.warning("%s: keeping its current TLS certificate: %s", self.what, reason)
            self._problem = (signature, reason)
        if signature is not None:
            self._seen = signature

    def _files(self) -> str:
        return _names(self.cert_file, self.key_file, self.ca_file)

    def _signature(self) -> _Signature:
        stats = []
        for path in (self.cert_file, self.key_file, self.ca_file):
            if path is None:
                continue
            try:
                found = os.stat(path)
            except OSError as error:
                raise TlsFilesError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
            stats.append((found.st_ino, found.st_size, found.st_mtime_ns))
        return tuple(stats)

    def _load(self, signature: _Signature) -> LoadedTls | None:
        """The files' bytes and context, or None when they changed while being read."""
        try:
            cert_chain = self.cert_file.read_bytes()
            private_key = self.key_file.read_bytes()
            client_ca = self.ca_file.read_bytes() if self.ca_file is not None else None
        except OSError as error:
            raise TlsFilesError(f"cannot read the TLS files {self._files()}: {error.strerror or error}") from None
        context = server_context(self.cert_file, self.key_file, self.ca_file)
        if self._signature() != signature:
            return None
        return LoadedTls(cert_chain, private_key, client_ca, context)


def http_server_context(files: ServerTlsFiles) -> ssl.SSLContext:
    """An HTTP server's TLS context that serves ``files`` as they are at each handshake (see the module docstring).

    The SNI callback runs for every ClientHello, with or without a server name, and switches the connection to
    the context of the files as last seen working."""
    base = files.current.context

    def use_current(connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _context: ssl.SSLContext) -> None:
        try:
            files.refreshed()
            connection.context = files.current.context
        except Exception:  # a failure here would fail the handshake; the current files still serve
            log.exception("%s: checking its TLS files failed; serving the current ones", files.what)

    base.sni_callback = use_current
    # The contexts made on reload have no callback of their own: the base one is the one OpenSSL calls.
    return base
