"""How each kind of source fills a cache entry: a local archive extracted, an S3 prefix listed and downloaded, an
http(s) resource downloaded and unpacked. Each reuses the entry its marker says is still current, counts every
byte it writes against the cache's quota and the per-model limits, and leaves nothing behind when it fails.
The store (store.py) decides which entry a source uses, who holds it and which fetches share one flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from agent.artifacts.archives import ArchiveKind, detect_archive, extract_archive
from agent.artifacts.cache import DATA, CacheDir, now_iso
from agent.artifacts.errors import ArtifactError
from agent.artifacts.http import download
from agent.artifacts.progress import PROGRESS_EVERY_SECONDS
from agent.artifacts.quota import CacheQuota, QuotaCharge
from agent.artifacts.s3 import download_objects, list_objects, make_client
from agent.artifacts.safety import CHUNK_BYTES, ExtractLimits
from agent.artifacts.sources import HttpLocation, S3Location
from agent.artifacts.versions import unwrap_single_folder
from modelplane.s3 import S3Settings

T = TypeVar("T")
_DOWNLOAD_FILE = "download"
# A tar holds each file behind a 512-byte header (two with a long name) and pads it to 512 bytes.
_ARCHIVE_OVERHEAD_PER_MEMBER = 1536


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


def inspect_local(path: Path) -> ArchiveKind | None:
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


async def in_thread(function: Callable[[threading.Event], T]) -> T:
    """Run blocking work in a thread; if the awaiting task is cancelled, tell the thread to stop.

    asyncio.to_thread runs it in a copy of the caller's context, so what it logs carries the log context (the
    model being loaded), as a download's progress lines must."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(function, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


class SourceFetchers:
    """Fills cache entries from each kind of source, through one cache, its quota and the per-model limits."""

    def __init__(
        self,
        cache: CacheDir,
        quota: CacheQuota,
        limits: ExtractLimits,
        timeout_seconds: float,
        progress_every_seconds: float = PROGRESS_EVERY_SECONDS,
    ) -> None:
        self._cache = cache
        self._quota = quota
        self._limits = limits
        self._timeout = timeout_seconds
        self._progress_every = progress_every_seconds
        self.downloads = 0  # how many bodies were downloaded (S3 objects, http resources): for tests and metrics

    async def local_archive(self, path: Path, kind: ArchiveKind, key: str, sha256: str | None) -> Path:
        """Entry ``key`` holds the extracted archive at ``path`` (extracted again when its size or mtime changes)."""
        return await in_thread(lambda stop: self._extract_local(path, kind, key, sha256, stop))

    async def s3_prefix(self, location: S3Location, settings: S3Settings, key: str) -> Path:
        """Entry ``key`` holds every object under the prefix (downloaded again unless every ETag matches)."""
        tree, downloaded = await in_thread(lambda stop: self._sync_s3(location, settings, key, stop))
        self.downloads += downloaded
        return tree

    def _settle(self, charge: QuotaCharge, key: str, temp: Path, marker: dict[str, Any]) -> Path:
        """Commit ``temp`` as entry ``key`` and count it as measured on disk (blocking: runs in a thread)."""
        entry = self._cache.commit(key, temp, marker)
        charge.settle(key, self._cache.measure(key))
        return entry

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
                client,
                location,
                objects,
                temp / DATA,
                settings=settings,
                limits=self._limits,
                stop=stop,
                charge=charge,
                progress_every_seconds=self._progress_every,
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

    async def http_resource(self, location: HttpLocation, key: str) -> Path:
        """Entry ``key`` holds the resource, unpacked (reused without a request when a sha256 pins it, else after
        a conditional GET that answers 304)."""
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
                progress_every_seconds=self._progress_every,
            )
            if got.not_modified and marker is not None:
                await asyncio.to_thread(self._cache.discard, temp)
                charge.cancel()
                return _tree(entry, marker)
            self.downloads += 1
            if location.sha256 is not None and got.sha256 != location.sha256:
                raise _digest_mismatch(location.display, location.sha256, got.sha256)
            tree, content = await in_thread(lambda stop: self._unpack(location, temp, charge, stop))
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
