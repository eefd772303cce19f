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
import hashlib
import logging
import os
import shutil
import stat
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent.artifacts.archives import ArchiveKind, detect_archive, extract_archive
from agent.artifacts.cache import DATA, CacheDir, cache_key, is_key, now_iso
from agent.artifacts.errors import ArtifactError
from agent.artifacts.http import download
from agent.artifacts.quota import CacheQuota, QuotaCharge
from agent.artifacts.s3 import download_objects, list_objects, make_client
from agent.artifacts.safety import CHUNK_BYTES, GIB, ExtractLimits
from agent.artifacts.sources import ArtifactSource, HttpLocation, LocalLocation, S3Location, parse_location
from agent.artifacts.storage_config import resolve_s3_settings, settings_from_config
from agent.artifacts.versions import select_version, unwrap_single_folder
from modelplane.s3 import S3Settings

T = TypeVar("T")


class StorageSecretReader(Protocol):
    """Where named storage secrets come from when not from files or the environment (kubernetes_secrets.py)."""

    async def storage_values(self, secret_name: str) -> tuple[dict[str, str], str]:
        """The rclone-style S3 keys of ``secret_name`` and a description of where they came from."""
        ...


log = logging.getLogger(__name__)
_DOWNLOAD_FILE = "download"
# A tar holds each file behind a 512-byte header (two with a long name) and pads it to 512 bytes.
_ARCHIVE_OVERHEAD_PER_MEMBER = 1536
# The cache's default limit, here and nowhere else (the agent's --max-cache-disk takes it from here): 32 GiB, four
# models at the per-model limit or hundreds of ordinary ones. The cache holds only what the replica's registered
# models use (an unload frees it), and those are bounded by the agent's --memory, so the limit binds on mistakes
# and bombs, not on real use.
DEFAULT_CACHE_LIMIT_BYTES = 32 * GIB


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _tree(entry: Path, marker: Mapping[str, Any]) -> Path:
    relative = marker.get("tree", DATA)
    return entry / (relative if isinstance(relative, str) else DATA)


def _digest_mismatch(display: str, expected: str, actual: str) -> ArtifactError:
    return ArtifactError(f"sha256 mismatch for {display}: expected {expected}, got {actual}")


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
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._cache = CacheDir(Path(cache_dir))
        self._secrets_dir = secrets_dir
        self._secret_reader = secret_reader
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._limits = limits
        self._timeout = timeout_seconds
        self._flights: dict[str, asyncio.Task[Path]] = {}
        self._entry_locks: dict[str, asyncio.Lock] = {}
        self._cleaned = False
        self._clean_lock = asyncio.Lock()
        self._downloads = 0
        self._quota = CacheQuota(cache_limit_bytes)
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
        return self._downloads

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

    # -- shared machinery --------------------------------------------------------------------------

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

    def _settle(self, charge: QuotaCharge, key: str, temp: Path, marker: dict[str, Any]) -> Path:
        """Commit ``temp`` as entry ``key`` and count it as measured on disk (blocking: runs in a thread)."""
        entry = self._cache.commit(key, temp, marker)
        charge.settle(key, self._cache.measure(key))
        return entry

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

    async def _in_thread(self, function: Callable[[threading.Event], T]) -> T:
        """Run blocking work in a thread; if the awaiting task is cancelled, tell the thread to stop."""
        stop = threading.Event()
        try:
            return await asyncio.to_thread(function, stop)
        except asyncio.CancelledError:
            stop.set()
            raise

    # -- local paths -------------------------------------------------------------------------------

    async def _local(self, location: LocalLocation) -> tuple[str | None, Callable[[], Awaitable[Path]]]:
        """The cache key (None for a folder, used in place) and how to fetch the tree."""
        path = location.path
        kind = await asyncio.to_thread(self._inspect_local, path)
        if kind is None:
            if location.sha256 is not None:
                raise ArtifactError(f"{path} is a folder: an expected sha256 applies to a single archive file")

            async def in_place() -> Path:
                return path

            return None, in_place
        key = cache_key("local-archive", str(path), location.sha256 or "")

        async def work() -> Path:
            async with self._entry_lock(key):
                return await self._in_thread(lambda stop: self._extract_local(path, kind, key, location.sha256, stop))

        return key, lambda: self._single_flight(key, work)

    @staticmethod
    def _inspect_local(path: Path) -> ArchiveKind | None:
        """None for a folder, the archive kind for an archive file; anything else is an ArtifactError."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ArtifactError(f"local path {path} does not exist") from None
        except OSError as exc:
            raise ArtifactError(f"cannot read local path {path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(mode):
            return None
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"local path {path} is neither a folder nor a file")
        try:
            kind = detect_archive(path)
        except OSError as exc:
            raise ArtifactError(f"cannot read local path {path}: {exc.strerror or exc}") from None
        if kind is None:
            raise ArtifactError(f"local file {path} is not a folder or a tar/zip archive (.tar, .tar.gz, .tgz, .zip)")
        return kind

    def _extract_local(
        self, path: Path, kind: ArchiveKind, key: str, sha256: str | None, stop: threading.Event
    ) -> Path:
        try:
            info = path.stat()
        except OSError as exc:
            raise ArtifactError(f"cannot read local path {path}: {exc.strerror or exc}") from None
        marker = self._cache.read_marker(key)
        if marker is not None and marker.get("size") == info.st_size and marker.get("mtime_ns") == info.st_mtime_ns:
            return _tree(self._cache.entry(key), marker)
        temp = self._cache.new_temp(key)
        charge = self._quota.charge(f"archive {path.name!r}")
        try:
            if sha256 is not None:
                actual = _sha256_file(path)
                if actual != sha256:
                    raise _digest_mismatch(str(path), sha256, actual)
            extract_archive(path, temp / DATA, self._limits, kind=kind, stop=stop, charge=charge)
            tree = unwrap_single_folder(temp / DATA).relative_to(temp)
            marker = {
                "uri": path.as_uri(),
                "fetched_at": now_iso(),
                "kind": f"local-{kind}",
                "size": info.st_size,
                "mtime_ns": info.st_mtime_ns,
                "sha256": sha256,
                "tree": tree.as_posix(),
            }
            return self._settle(charge, key, temp, marker) / tree
        except BaseException:
            self._cache.discard(temp)
            charge.cancel()
            raise

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
                tree, downloaded = await self._in_thread(lambda stop: self._sync_s3(location, settings, key, stop))
                self._downloads += downloaded
                return tree

        return key, lambda: self._single_flight(flight, work)

    def _sync_s3(self, location: S3Location, settings: S3Settings, key: str, stop: threading.Event) -> tuple[Path, int]:
        """List the prefix; reuse the cache entry if every ETag matches, else download the prefix again.

        Returns the tree and how many objects were downloaded.
        """
        client = make_client(settings, self._timeout)
        objects = list_objects(client, location, settings, self._limits)
        etags = {"/".join(item.relative): item.etag for item in objects}
        marker = self._cache.read_marker(key)
        if marker is not None and marker.get("objects") == etags:
            return _tree(self._cache.entry(key), marker), 0
        temp = self._cache.new_temp(key)
        charge = self._quota.charge(location.display)
        try:
            download_objects(
                client, location, objects, temp / DATA, settings=settings, limits=self._limits, stop=stop, charge=charge
            )
            marker = {
                "uri": location.display,
                "endpoint": settings.url,
                "fetched_at": now_iso(),
                "kind": "s3",
                "objects": etags,
                "tree": DATA,
            }
            return self._settle(charge, key, temp, marker) / DATA, len(objects)
        except BaseException:
            self._cache.discard(temp)
            charge.cancel()
            raise

    # -- http(s) -----------------------------------------------------------------------------------

    def _http(self, location: HttpLocation) -> tuple[str, Callable[[], Awaitable[Path]]]:
        key = cache_key("http", location.url, location.sha256 or "")

        async def work() -> Path:
            async with self._entry_lock(key):
                return await self._fetch_http(location, key)

        return key, lambda: self._single_flight(key, work)

    async def _fetch_http(self, location: HttpLocation, key: str) -> Path:
        marker = await asyncio.to_thread(self._cache.read_marker, key)
        entry = self._cache.entry(key)
        conditional: dict[str, str] = {}
        if marker is not None:
            if location.sha256 is not None:
                return _tree(entry, marker)  # the digest pins the content: no request at all
            if isinstance(marker.get("etag"), str):
                conditional["If-None-Match"] = marker["etag"]
            if isinstance(marker.get("last_modified"), str):
                conditional["If-Modified-Since"] = marker["last_modified"]
        temp = await asyncio.to_thread(self._cache.new_temp, key)
        charge = self._quota.charge(location.display)
        try:
            got = await download(
                location.url,
                location.display,
                temp / _DOWNLOAD_FILE,
                timeout_seconds=self._timeout,
                max_bytes=self._limits.max_total_bytes + _ARCHIVE_OVERHEAD_PER_MEMBER * (self._limits.max_files + 2),
                conditional=conditional or None,
                before_write=charge.take,
            )
            if got.not_modified and marker is not None:
                await asyncio.to_thread(self._cache.discard, temp)
                charge.cancel()
                return _tree(entry, marker)
            self._downloads += 1
            if location.sha256 is not None and got.sha256 != location.sha256:
                raise _digest_mismatch(location.display, location.sha256, got.sha256)
            tree, content = await self._in_thread(lambda stop: self._unpack(location, temp, charge, stop))
            new_marker = {
                "uri": location.display,
                "fetched_at": now_iso(),
                "kind": "http",
                "content": content,
                "sha256": got.sha256,
                "etag": got.etag,
                "last_modified": got.last_modified,
                "size": got.size,
                "tree": tree,
            }
            committed = await asyncio.to_thread(self._settle, charge, key, temp, new_marker)
            return committed / tree
        except asyncio.CancelledError:
            # Not awaited: cancelled. The charge is given back once the folder is gone.
            asyncio.get_running_loop().run_in_executor(None, self._discard, temp, charge)
            raise
        except BaseException:
            await asyncio.to_thread(self._discard, temp, charge)
            raise

    def _discard(self, temp: Path, charge: QuotaCharge) -> None:
        self._cache.discard(temp)
        charge.cancel()

    def _unpack(
        self, location: HttpLocation, temp: Path, charge: QuotaCharge, stop: threading.Event
    ) -> tuple[str, str]:
        """Extract the verified download (or keep a single file under its name); returns (tree, content)."""
        downloaded = temp / _DOWNLOAD_FILE
        kind = detect_archive(downloaded, location.file_name or "")
        if kind is not None:
            extract_archive(
                downloaded, temp / DATA, self._limits, kind=kind, name=location.display, stop=stop, charge=charge
            )
            archive_bytes = downloaded.stat().st_size
            downloaded.unlink()
            charge.give_back(archive_bytes)
            return unwrap_single_folder(temp / DATA).relative_to(temp).as_posix(), kind
        if location.file_name is None:
            raise ArtifactError(
                f"{location.display} is not a tar or zip archive, and its URL path has no file name to keep it under"
            )
        refusal = self._limits.file_refusal(location.display, downloaded.stat().st_size)
        if refusal is not None:
            raise refusal
        (temp / DATA).mkdir()
        downloaded.rename(temp / DATA / location.file_name)
        return DATA, "file"
