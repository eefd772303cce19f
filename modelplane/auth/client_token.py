"""The bearer token a client presents (to the scheduler, or the gateway's to the agents' proxies), read again from
its file when the file changes.

On Kubernetes the token is the pod's ServiceAccount token, a projected file the kubelet replaces about hourly (at
80% of its lifetime) and which the API server stops accepting when it expires: a token read once at start would
lock a long-running process out within the hour (a gRPC channel or an agent session lives for days). So
``current()`` stats the file before every call it is asked for (a few microseconds; reloading_file.py does the
same for the servers' token and policy files) and reads it again when its inode, size or times changed. The
kubelet swaps the file atomically (a symbolic link to a new folder), so a reader never sees half a token.

A file that cannot be used any more (gone, empty, unreadable) keeps the last good token and logs why, once per
change: the next change brings a good one, and a call with the last token is refused or admitted as the server
decides, rather than the client crashing. The first read, at start, must succeed: the process refuses to start
otherwise (modelplane/auth_flags.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from modelplane.auth.reloading_file import MAX_FILE_BYTES
from modelplane.auth.tokens import MAX_TOKEN_CHARS

__all__ = ["ClientToken", "ClientTokenError", "read_token_file", "token_error"]

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int, int, int]


class ClientTokenError(ValueError):
    """A token file or value that cannot be presented; the message names where, never the token."""


def token_error(token: str, source: str) -> str | None:
    """Why ``token`` cannot be sent as a bearer token (None when it can)."""
    if not token:
        return f"{source} holds no token"
    if len(token) > MAX_TOKEN_CHARS or not token.isprintable() or " " in token:
        return f"the token in {source} is not one printable word of at most {MAX_TOKEN_CHARS} characters"
    return None


def read_token_file(path: Path) -> str:
    """The token in ``path``: its first line, stripped. Raises ClientTokenError."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ClientTokenError(f"{path}: too large for a token file")
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ClientTokenError(f"cannot read the token file {path}: {error}") from None
    token = lines[0].strip() if lines else ""
    problem = token_error(token, f"the token file {path}")
    if problem is not None:
        raise ClientTokenError(problem)
    return token


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class ClientToken:
    """A token to present: a fixed one (the environment's), or a file's, followed as the file changes."""

    def __init__(self, token: str, path: Path | None = None, signature: _Signature | None = None) -> None:
        """Use :meth:`fixed` or :meth:`from_file`."""
        self._token = token
        self._path = path
        self._signature = signature  # the file's when ``token`` was read from it

    @classmethod
    def fixed(cls, token: str) -> ClientToken:
        """Raises ClientTokenError for a token that cannot be sent."""
        problem = token_error(token, "the token given")
        if problem is not None:
            raise ClientTokenError(problem)
        return cls(token)

    @classmethod
    def from_file(cls, path: Path) -> ClientToken:
        """The token in ``path`` now, followed from then on. Raises ClientTokenError when it cannot be used."""
        try:
            signature: _Signature | None = _signature(path.stat())
        except OSError:
            signature = None
        # The file as it was before this read: a change during the read is read again at the next call.
        return cls(read_token_file(path), path, signature)

    @property
    def path(self) -> Path | None:
        return self._path

    def __repr__(self) -> str:  # the token never reaches a log line
        return f"ClientToken(path={self._path!r}, token=<hidden>)"

    def current(self) -> str:
        """The token to send now: the file's, read again if it changed since the last call."""
        if self._path is None:
            return self._token
        try:
            signature = _signature(self._path.stat())
        except OSError as error:
            if self._signature is not None:
                log.warning("the token file %s cannot be read (%s); presenting the last token", self._path, error)
                self._signature = None
            return self._token
        if signature == self._signature:
            return self._token
        self._signature = signature
        try:
            self._token = read_token_file(self._path)
        except ClientTokenError as error:
            log.warning("%s; presenting the last token until the file changes again", error)
        else:
            log.info("the token file %s changed: presenting its new token", self._path)
        return self._token
