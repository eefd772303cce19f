"""The scheduler's durable state store: the interface every backend implements, and an in-memory one.

Invariants every ``StateStore`` keeps:

* **Durable before return.** When ``apply()`` returns, its changes survive a crash of the process (kill -9)
  and, for disk-backed stores, of the machine. The scheduler acknowledges an RPC only after that.
* **Atomic per call.** All changes of one ``apply()`` call become visible together or not at all, even
  across a crash. Within a call, changes apply in order (a later change to the same key wins).
* **Validated first.** Bad table names, keys or values raise ``ValueError`` (wrong types raise
  ``TypeError``) before anything is written.
* **Failures are explicit.** An I/O failure raises ``StateStoreError``; the caller must not acknowledge the
  mutation. A failed ``apply()`` is "not acknowledged", which is weaker than "certainly not written": after
  some I/O errors (a failed fsync) the changes may reappear after a restart.

Data model: named tables of ``key -> bytes``; a backend knows nothing about what the bytes mean.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

TABLE_NAME_PATTERN = re.compile(r"[a-z][a-z_]{0,62}")
MAX_KEY_CHARS = 1024
MAX_VALUE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Put:
    """Set ``table[key] = value``, creating or replacing the record."""

    table: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``table[key]``; deleting a missing key is not an error."""

    table: str
    key: str


Change = Put | Delete


class StateStoreError(Exception):
    """The store could not read or write durably (disk full, I/O error, damaged file, closed store).

    The message names the file and says what a person can do about it.
    """


class StateStoreClosedError(StateStoreError):
    """``apply()`` or ``load()`` was called after ``close()``: a bug in the caller."""


class StateStore(Protocol):
    """Durable ``table -> key -> bytes`` storage; see the module docstring for the invariants."""

    def load(self, table: str) -> dict[str, bytes]:
        """Every record of ``table`` (empty if it has none). Synchronous: meant for start-up only."""
        ...

    async def apply(self, changes: Sequence[Change]) -> None:
        """Write ``changes`` atomically; they are durable when this returns. Raises StateStoreError."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources. Later calls to apply() or load() raise."""
        ...


def validate_table(table: object) -> str:
    """Return ``table`` if it is a valid table name, else raise ValueError/TypeError."""
    if not isinstance(table, str):
        raise TypeError(f"table name must be str, not {type(table).__name__}")
    if TABLE_NAME_PATTERN.fullmatch(table) is None:
        raise ValueError(
            f"invalid table name {table!r}: it must match {TABLE_NAME_PATTERN.pattern} "
            "(a lowercase letter, then up to 62 lowercase letters or underscores)"
        )
    return table


def validate_changes(changes: Sequence[Change]) -> None:
    """Check every change of a batch; raise ValueError/TypeError naming the first bad one."""
    for index, change in enumerate(changes):
        if not isinstance(change, Put | Delete):
            raise TypeError(f"change #{index} must be Put or Delete, not {type(change).__name__}")
        validate_table(change.table)
        key = change.key
        if not isinstance(key, str):
            raise TypeError(f"change #{index}: key must be str, not {type(key).__name__}")
        if not key:
            raise ValueError(f"change #{index} ({change.table}): key must not be empty")
        if len(key) > MAX_KEY_CHARS:
            raise ValueError(
                f"change #{index} ({change.table}): key of {len(key)} characters exceeds the limit of {MAX_KEY_CHARS}"
            )
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"change #{index} ({change.table}): key {key!r} is not valid Unicode text") from None
        if isinstance(change, Put):
            value = change.value
            if not isinstance(value, bytes):
                raise TypeError(
                    f"change #{index} ({change.table}/{key}): value must be bytes, not {type(value).__name__}"
                )
            if len(value) > MAX_VALUE_BYTES:
                raise ValueError(
                    f"change #{index} ({change.table}/{key}): value of {len(value)} bytes exceeds "
                    f"the limit of {MAX_VALUE_BYTES} bytes"
                )


class MemoryStateStore:
    """A ``StateStore`` kept in a dict, for tests of other components. Not durable across processes.

    Pass the same ``tables`` dict to a new instance to simulate a restart ("reopen") of the store.
    Each ``apply()`` is atomic because it validates everything before changing anything.
    """

    def __init__(self, tables: dict[str, dict[str, bytes]] | None = None) -> None:
        self.tables: dict[str, dict[str, bytes]] = {} if tables is None else tables
        self.apply_count = 0
        self._closed = False

    def load(self, table: str) -> dict[str, bytes]:
        validate_table(table)
        self._check_open()
        return dict(self.tables.get(table, {}))

    async def apply(self, changes: Sequence[Change]) -> None:
        batch = tuple(changes)
        validate_changes(batch)
        self._check_open()
        for change in batch:
            if isinstance(change, Put):
                self.tables.setdefault(change.table, {})[change.key] = change.value
            else:
                self.tables.get(change.table, {}).pop(change.key, None)
        self.apply_count += 1

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StateStoreClosedError("the in-memory state store is closed; it cannot be used after close()")
