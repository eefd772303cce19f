"""The artifact cache's disk limit: what the cache holds, what fetches in progress have written, and the limit.

Every byte a fetch writes into the cache (a download, an extracted file, an S3 object) is counted by its
Charge *before* it is written, so the cache never holds more than its limit, complete entries and fetches
in progress together. A complete entry counts what it measures on disk (its files' sizes), measured again
after an agent restart, so the limit means the same across restarts. Thread-safe: fetches write in threads.
"""

from __future__ import annotations

import threading

from agent.artifacts.errors import ArtifactError


class CacheQuota:
    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("the cache limit must be at least 1 byte")
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._entries: dict[str, int] = {}  # cache key -> bytes on disk
        self._in_flight = 0  # bytes written by fetches that have not finished

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._entries.values()) + self._in_flight

    def entry_bytes(self, key: str) -> int | None:
        with self._lock:
            return self._entries.get(key)

    def charge(self, what: str) -> QuotaCharge:
        """A new account for one fetch; ``what`` names it in messages."""
        return QuotaCharge(self, what)

    def set_entries(self, measured: dict[str, int]) -> None:
        """What the cache folder holds, as measured at start-up."""
        with self._lock:
            self._entries = dict(measured)

    def drop_entry(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _take(self, charge: QuotaCharge, count: int, claim: str | None = None) -> None:
        with self._lock:
            cached = sum(self._entries.values())
            if cached + self._in_flight + count > self.limit_bytes:
                others = self._in_flight - charge.bytes
                pending = f", {others} bytes written by other fetches in progress" if others else ""
                progress = (
                    f"{claim}" if claim is not None else f"it had written {charge.bytes} bytes when it was stopped"
                )
                raise ArtifactError(
                    f"the artifact cache is full: its limit is {self.limit_bytes} bytes (the agent's "
                    f"--max-cache-disk), {cached} bytes are cached for {len(self._entries)} model artifact(s)"
                    f"{pending}, and {charge.what} does not fit ({progress}); unload models to free space, "
                    f"or raise the limit"
                )
            if claim is None:
                self._in_flight += count
                charge.bytes += count

    def _give_back(self, charge: QuotaCharge, count: int) -> None:
        with self._lock:
            count = min(count, charge.bytes)
            self._in_flight -= count
            charge.bytes -= count

    def _settle(self, charge: QuotaCharge, key: str, measured: int) -> None:
        with self._lock:
            self._in_flight -= charge.bytes
            charge.bytes = 0
            self._entries[key] = measured


class QuotaCharge:
    """The bytes one fetch has written so far (implements safety.Charge)."""

    def __init__(self, quota: CacheQuota, what: str) -> None:
        self._quota = quota
        self.what = what
        self.bytes = 0

    def take(self, count: int) -> None:
        self._quota._take(self, count)

    def check_room(self, count: int, claim: str) -> None:
        self._quota._take(self, count, claim)

    def give_back(self, count: int) -> None:
        """``count`` of this fetch's bytes were deleted again (e.g. the downloaded archive, once extracted)."""
        self._quota._give_back(self, count)

    def cancel(self) -> None:
        """The fetch failed and its temporary folder is gone: none of its bytes count any more."""
        self._quota._give_back(self, self.bytes)

    def settle(self, key: str, measured: int) -> None:
        """The fetch became (or replaced) cache entry ``key``, which measures ``measured`` bytes on disk."""
        self._quota._settle(self, key, measured)
