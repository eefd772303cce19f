"""ArtifactStore: fetch a model version's files into a local folder, with a cache.

Sources (``ArtifactSource.uri``):

- an absolute path or ``file:///path``: a folder is used in place (never copied); a .tar, .tar.gz,
  .tgz, .tar.bz2, .tar.xz or .zip file is extracted into the cache (again when its size or mtime changes);
- ``s3://bucket/prefix``: every object under ``prefix/`` (relative paths kept); a prefix that is
  itself one object key is fetched as that single file. Credentials: see storage_config.py;
- ``http(s)://``: an archive (judged by the name's suffix, else by content) is extracted; any other
  body is kept as one file under the URL's base name. An expected sha256 is verified before anything
  is extracted or kept.

Version selection (versions.py) runs on the fetched tree; an archive whose top level is a single,
non-numbered folder is first unwrapped to that folder.

Cache (cache.py): ``cache_dir/<key>/`` with the tree in ``data/`` and the ``.complete`` marker.
The key is the sha256 of the normalised location: the path of a local archive (and its expected
digest), the S3 endpoint, bucket and prefix (never credentials), the http URL without its fragment
and the expected digest. Reuse:

- S3: the prefix is listed on every fetch (so credentials are always checked) and the entry reused
  if every relative path and ETag is unchanged; otherwise the whole prefix is fetched again;
- http with a sha256: reused without a request; without: a conditional GET (If-None-Match /
  If-Modified-Since) and a 304 reuses it;
- a replaced entry is removed once its successor is in place, so a server must have loaded (or
  linked or copied) a version's files before the same source is fetched again with changed content.

Disk: every byte written into the cache is counted before it is written, against the per-model limits
(``ExtractLimits``: size, file count, compression ratio) and the cache's limit (quota.py); a fetch over
any of them stops there, and what it wrote is removed. Holds: ``fetch(source, holder=...)`` records that
``holder`` (a loaded model version) uses the entry; ``release(holder)`` removes the entry once no holder
is left, so the cache holds what the agent's models need and nothing more. After a restart the agent
says which holds survive (``keep_only``); every other entry is removed, and the limit counts what
remains as measured on disk.

Network waits are bounded by ``timeout_seconds`` each; minio calls, extraction, hashing and file
work run in threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

from agent.artifacts.cache import CacheDir, cache_key, is_key
from agent.artifacts.errors import ArtifactError
from agent.artifacts.progress import PROGRESS_EVERY_SECONDS
from agent.artifacts.quota import CacheQuota
from agent.artifacts.safety import GIB, ExtractLimits
from agent.artifacts.source_fetchers import SourceFetchers, inspect_local
from agent.artifacts.sources import ArtifactSource, HttpLocation, LocalLocation, S3Location, parse_location
from agent.artifacts.storage_config import resolve_s3_settings, settings_from_config
from agent.artifacts.versions import select_version


class StorageSecretReader(Protocol):
    """Where named storage secrets come from when not from files or the environment (kubernetes_secrets.py)."""

    async def storage_values(self, secret_name: str) -> tuple[dict[str, str], str]:
        """The rclone-style S3 keys of ``secret_name`` and a description of where they came from."""
        ...


log = logging.getLogger(__name__)
# The cache's default limit, here and nowhere else (the agent's --max-cache-disk takes it from here): 32 GiB, four
# models at the per-model limit or hundreds of ordinary ones. The cache holds only what the replica's registered
# models use (an unload frees it), and those are bounded by the agent's --memory, so the limit binds on mistakes
# and bombs, not on real use.
DEFAULT_CACHE_LIMIT_BYTES = 32 * GIB


class ArtifactStore:
    """Fetches artifacts into ``cache_dir`` (local folders are used in place).

    - ``secrets_dir/<name>`` holds the storage secret ``name``; without the file, the environment
      variable ``MODELPLANE_SECRET_<NAME>`` is used. With a ``secret_reader`` (an agent in a pod: the
      Secrets of its namespace, kubernetes_secrets.py), that reader alone answers for named secrets.
    - ``environ`` (default ``os.environ``) also gives the AWS_* defaults for S3 sources without a config.
    - ``limits`` bound every extracted archive and every S3 prefix; an http download may be at most
      ``max_total_bytes`` plus tar's per-member overhead.
    - ``cache_limit_bytes`` bounds everything the cache holds, complete or being fetched.
    - ``timeout_seconds`` bounds every network wait: connecting, a response, each read of a body.
    - ``progress_every_seconds``: how often a download that runs long logs its progress (progress.py).

    Concurrent fetches of one source share one download. Every failure is an ArtifactError. A fetch
    without a holder is not protected from a release that removes the entry it returned.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        secrets_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        limits: ExtractLimits = ExtractLimits(),  # noqa: B008 -- frozen, so one shared default is safe
        cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
        timeout_seconds: float = 600,
        secret_reader: StorageSecretReader | None = None,
        progress_every_seconds: float = PROGRESS_EVERY_SECONDS,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._cache = CacheDir(Path(cache_dir))
        self._secrets_dir = secrets_dir
        self._secret_reader = secret_reader
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._flights: dict[str, asyncio.Task[Path]] = {}
        self._entry_locks: dict[str, asyncio.Lock] = {}
        self._cleaned = False
        self._clean_lock = asyncio.Lock()
        self._quota = CacheQuota(cache_limit_bytes)
        self._fetchers = SourceFetchers(self._cache, self._quota, limits, timeout_seconds, progress_every_seconds)
        self._holds: dict[str, str] = {}  # holder (a loaded model version) -> the cache key it uses
        self._removals: set[asyncio.Task[None]] = set()

    @property
    def cache_dir(self) -> Path:
        return self._cache.root

    @property
    def cache_bytes(self) -> int:
        """What the cache holds on disk now, complete entries and fetches in progress (for metrics and tests)."""
        return self._quota.used_bytes

    def owns(self, folder: Path) -> bool:
        """Whether ``folder`` lies in one of the cache's entries: files this store wrote and never writes again,
        so they may be hard-linked. Judged on resolved paths: ``CACHE/../mine``, or a link in the cache to a
        folder elsewhere, is not the store's (a user may rewrite their own files in place)."""
        return self._cache.key_of(folder) is not None

    def held_key(self, holder: str) -> str | None:
        """The cache entry ``holder`` uses, or None (a local folder, used in place)."""
        return self._holds.get(holder)

    async def release(self, holder: str) -> None:
        """``holder`` no longer uses its entry: removed when no other holder uses it."""
        key = self._holds.pop(holder, None)
        if key is not None:
            await self._remove_unheld(key)

    async def keep_only(self, holds: Mapping[str, str]) -> None:
        """After a restart: ``holds`` (holder -> cache key) are all that survive; every other entry is removed."""
        await self._clean_once()
        self._holds = {holder: key for holder, key in holds.items() if is_key(key)}
        for key in await asyncio.to_thread(self._cache.complete_keys):
            await self._remove_unheld(key)

    @property
    def downloads(self) -> int:
        """How many bodies this store has downloaded (S3 objects, http resources): for tests and metrics."""
        return self._fetchers.downloads

    async def fetch(self, source: ArtifactSource, *, holder: str | None = None) -> Path:
        """The selected version folder of ``source``, ready to be used read-only.

        With ``holder``, the cache entry is held for it until ``release(holder)`` (a failed fetch holds nothing).
        """
        location = parse_location(source)
        try:
            await self._clean_once()
            if isinstance(location, LocalLocation):
                (key, fetch_root), label = await self._local(location), str(location.path)
            elif isinstance(location, S3Location):
                (key, fetch_root), label = await self._s3(location, source), location.display
            else:
                (key, fetch_root), label = self._http(location), location.display

            async def fetch_version() -> Path:
                root = await fetch_root()
                return await asyncio.to_thread(select_version, root, source.artifact_version, label)

            if holder is None or key is None:
                return await fetch_version()
            return await self._held(holder, key, fetch_version)
        except OSError as exc:  # network errors are already ArtifactErrors: this is the local disk
            raise ArtifactError(f"cannot store the artifacts in {self._cache.root}: {exc}") from exc

    # -- holds, flights and the entries they share ----------------------------------------------------

    async def _clean_once(self) -> None:
        """At the first use: remove what an earlier process left unfinished, and measure what it left complete."""
        if self._cleaned:
            return
        async with self._clean_lock:
            if not self._cleaned:
                await asyncio.to_thread(self._cache.clean)
                measured = await asyncio.to_thread(self._measure_entries)
                self._quota.set_entries(measured)
                await asyncio.to_thread(self._warn_if_the_disk_is_smaller)
                self._cleaned = True

    def _warn_if_the_disk_is_smaller(self) -> None:
        """The cache's limit counts what the cache writes; it cannot make room on the disk. Said once, at start-up,
        when the limit is more than the cache holds plus what its filesystem has free."""
        folder = self._cache.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # made at the first fetch: the filesystem it will be made on
        try:
            free = shutil.disk_usage(folder).free
        except OSError as error:
            log.warning("cannot tell how much disk is free for the artifact cache %s: %s", self._cache.root, error)
            return
        held = self._quota.used_bytes
        if self._quota.limit_bytes > held + free:
            log.warning(
                "the artifact cache's limit (the agent's --max-cache-disk is %d bytes) is more than its filesystem "
                "can give: %s holds %d bytes and %d more are free. Loads will fail for want of disk ('No space left "
                "on device') before the limit refuses them; lower --max-cache-disk or free disk",
                self._quota.limit_bytes,
                self._cache.root,
                held,
                free,
            )

    def _measure_entries(self) -> dict[str, int]:
        return {key: self._cache.measure(key) for key in self._cache.complete_keys()}

    async def _held(self, holder: str, key: str, fetch: Callable[[], Awaitable[Path]]) -> Path:
        """Run ``fetch`` (of cache entry ``key``) for ``holder``. The hold is taken first, so no release by
        another holder removes the entry meanwhile; a failed fetch gives it back."""
        previous = self._holds.get(holder)
        self._holds[holder] = key
        try:
            tree = await fetch()
        except asyncio.CancelledError:
            self._restore_hold(holder, previous)
            if previous != key:  # the shared flight goes on; once it is done, the entry goes if unheld
                removal = asyncio.get_running_loop().create_task(self._remove_unheld(key))
                self._removals.add(removal)
                removal.add_done_callback(self._removals.discard)
            raise
        except BaseException:
            self._restore_hold(holder, previous)
            if previous != key:
                await self._remove_unheld(key)
            raise
        if previous is not None and previous != key:
            await self._remove_unheld(previous)
        return tree

    def _restore_hold(self, holder: str, previous: str | None) -> None:
        if previous is None:
            self._holds.pop(holder, None)
        else:
            self._holds[holder] = previous

    async def _remove_unheld(self, key: str) -> None:
        """Remove entry ``key`` unless a holder uses it (checked under the entry's lock, after its flights)."""
        async with self._entry_lock(key):
            if key in self._holds.values():
                return
            try:
                await asyncio.to_thread(self._cache.remove, key)
            except OSError as error:  # still on disk, so still counted; the next start-up tries again
                log.warning("could not remove cache entry %s: %s", key, error)
                return
            self._quota.drop_entry(key)

    async def _single_flight(self, flight: str, work: Callable[[], Awaitable[Path]]) -> Path:
        """Run ``work`` once for all concurrent callers with the same ``flight`` key.

        The work runs in its own task, so a caller that is cancelled does not cancel it for the others.
        """
        task = self._flights.get(flight)
        if task is None:

            async def run() -> Path:
                return await work()

            task = asyncio.get_running_loop().create_task(run())
            self._flights[flight] = task

            def finished(done: asyncio.Task[Path]) -> None:
                if self._flights.get(flight) is done:
                    del self._flights[flight]
                if not done.cancelled():
                    done.exception()  # retrieved here, so a flight nobody awaits any more is not logged

            task.add_done_callback(finished)
        return await asyncio.shield(task)

    def _entry_lock(self, key: str) -> asyncio.Lock:
        """Serialises the flights that touch one cache entry (e.g. one S3 prefix read with two credentials)."""
        return self._entry_locks.setdefault(key, asyncio.Lock())

    # -- local paths -------------------------------------------------------------------------------

    async def _local(self, location: LocalLocation) -> tuple[str | None, Callable[[], Awaitable[Path]]]:
        """The cache key (None for a folder, used in place) and how to fetch the tree."""
        path = location.path
        kind = await asyncio.to_thread(inspect_local, path)
        if kind is None:
            if location.sha256 is not None:
                raise ArtifactError(f"{path} is a folder: an expected sha256 applies to a single archive file")

            async def in_place() -> Path:
                return path

            return None, in_place
        key = cache_key("local-archive", str(path), location.sha256 or "")

        async def work() -> Path:
            async with self._entry_lock(key):
                return await self._fetchers.local_archive(path, kind, key, location.sha256)

        return key, lambda: self._single_flight(key, work)

    # -- S3 ----------------------------------------------------------------------------------------

    async def _s3(self, location: S3Location, source: ArtifactSource) -> tuple[str, Callable[[], Awaitable[Path]]]:
        secret_name = source.storage_secret_name
        if secret_name is not None and source.storage_rclone_config is None and self._secret_reader is not None:
            values, origin = await self._secret_reader.storage_values(secret_name)
            settings = settings_from_config(values, origin, self._environ)
        else:
            settings = await asyncio.to_thread(
                resolve_s3_settings,
                rclone_config=source.storage_rclone_config,
                secret_name=secret_name,
                secrets_dir=self._secrets_dir,
                environ=self._environ,
            )
        # The cache entry is the endpoint's prefix; the flight also keys on the credentials, so a caller
        # with wrong credentials never shares a listing made with right ones.
        key = cache_key("s3", settings.url, location.bucket, location.prefix)
        flight = cache_key(key, settings.access_key or "", settings.secret_key or "", settings.session_token or "")

        async def work() -> Path:
            async with self._entry_lock(key):
                return await self._fetchers.s3_prefix(location, settings, key)

        return key, lambda: self._single_flight(flight, work)

    # -- http(s) -----------------------------------------------------------------------------------

    def _http(self, location: HttpLocation) -> tuple[str, Callable[[], Awaitable[Path]]]:
        key = cache_key("http", location.url, location.sha256 or "")

        async def work() -> Path:
            async with self._entry_lock(key):
                return await self._fetchers.http_resource(location, key)

        return key, lambda: self._single_flight(key, work)
