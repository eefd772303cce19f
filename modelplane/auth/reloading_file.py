"""A small configuration file (tokens, policy) that is read again when it changes, without a restart.

On every use the file is stat'ed (a few microseconds): when its inode, size, modification or change time differ
from the last read, it is read and parsed again. A file that no longer parses, or cannot be read, keeps the last
good contents in force and logs why once per change: a typo in the policy must not lock everyone out, nor let
everyone in. The first read at start-up must succeed (the process refuses to start otherwise).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["MAX_FILE_BYTES", "AuthFileError", "ReloadingFile"]

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1024 * 1024


class AuthFileError(ValueError):
    """A token or policy file that cannot be used, with a message naming the file and line."""


Signature = tuple[int, int, int, int, int]


def _signature(stat: os.stat_result) -> Signature:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


T = TypeVar("T")


class ReloadingFile(Generic[T]):
    def __init__(self, path: Path, parse: Callable[[str, str], T]) -> None:
        """``parse(text, where)`` turns the file's text into T or raises AuthFileError (``where`` names the file
        for its messages). Raises AuthFileError when the file cannot be read or parsed now."""
        self.path = path
        self._parse = parse
        self._signature: Signature | None = None
        self._refused: Signature | None = None
        self._unreadable = False
        self._value = self._read()

    def _read(self) -> T:
        try:
            stat = self.path.stat()
            if stat.st_size > MAX_FILE_BYTES:
                raise AuthFileError(f"{self.path}: {stat.st_size} bytes, more than the {MAX_FILE_BYTES} allowed")
            data = self.path.read_bytes()[: MAX_FILE_BYTES + 1]
        except OSError as error:
            raise AuthFileError(f"cannot read {self.path}: {error.strerror or error}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthFileError(f"{self.path}: not UTF-8 text") from None
        value = self._parse(text, str(self.path))
        self._signature = _signature(stat)
        return value

    @property
    def current(self) -> T:
        """The file's contents as last parsed successfully, read again first if the file changed."""
        try:
            signature: Signature | None = _signature(self.path.stat())
        except OSError as error:
            # Gone or unreadable (a rename in progress, a permission change): the last good contents stay.
            if not self._unreadable:
                log.error("cannot read %s: %s; keeping the last good contents", self.path, error.strerror or error)
                self._unreadable = True
            return self._value
        self._unreadable = False
        if signature in (self._signature, self._refused):
            return self._value
        try:
            self._value = self._read()
        except AuthFileError as error:
            log.error("%s; keeping the last good contents", error)
            self._refused = signature  # logged once; read again when the file changes again
            return self._value
        self._refused = None
        log.info("reloaded %s", self.path)
        return self._value
