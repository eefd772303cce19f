"""Durable scheduler state: every accepted mutation is written before its RPC returns.

``StateStore`` is the interface (durable before return, atomic per call); ``SqliteStateStore`` is the
production backend (one SQLite file, group commit) and ``MemoryStateStore`` the one for unit tests.
"""

from scheduler.persistence.sqlite_store import SqliteStateStore
from scheduler.persistence.state_store import (
    MAX_KEY_CHARS,
    MAX_VALUE_BYTES,
    TABLE_NAME_PATTERN,
    Change,
    Delete,
    MemoryStateStore,
    Put,
    StateStore,
    StateStoreClosedError,
    StateStoreError,
)

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_VALUE_BYTES",
    "TABLE_NAME_PATTERN",
    "Change",
    "Delete",
    "MemoryStateStore",
    "Put",
    "SqliteStateStore",
    "StateStore",
    "StateStoreClosedError",
    "StateStoreError",
]
