"""Downloading one http(s) resource to a file, streaming, hashing as it goes, with timeouts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp

from agent.artifacts.errors import ArtifactError
from agent.artifacts.progress import PROGRESS_EVERY_SECONDS, DownloadProgress
from agent.artifacts.safety import CHUNK_BYTES


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A finished download; ``not_modified`` when a conditional GET answered 304 (nothing was written)."""

    not_modified: bool
    sha256: str = ""
    size: int = 0
    etag: str | None = None
    last_modified: str | None = None


class _Sink:
    """A file being written and hashed; its methods block, so they are called through asyncio.to_thread."""

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = path.open("xb")
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)

    def close(self) -> str:
        self._file.close()
        return self._hash.hexdigest()


def _write(sink: _Sink, data: bytes, before_write: Callable[[int], None] | None) -> None:
    if before_write is not None:
        before_write(len(data))
    sink.write(data)


def _message(exc: BaseException, url: str, display: str) -> str:
    """An exception's text with the full URL (which may hold credentials) replaced by its redacted form."""
    return f"{type(exc).__name__}: {exc}".replace(url, display)


async def download(
    url: str,
    display: str,
    target: Path,
    *,
    timeout_seconds: float,
    max_bytes: int,
    conditional: dict[str, str] | None = None,
    before_write: Callable[[int], None] | None = None,
    progress_every_seconds: float = PROGRESS_EVERY_SECONDS,
) -> Downloaded:
    """GET ``url`` into the new file ``target``.

    ``timeout_seconds`` bounds every wait: connecting, the response headers, and each read of the body.
    ``conditional`` (If-None-Match / If-Modified-Since) may make the answer a 304. ``before_write`` is
    told how many bytes are about to be written, and may refuse them by raising an ArtifactError. A status
    other than 200 (or that 304), a body over ``max_bytes``, a timeout or a connection failure is an
    ArtifactError. A download that runs longer than ``progress_every_seconds`` logs its progress (progress.py).
    """
    timeout = aiohttp.ClientTimeout(
        total=None, connect=timeout_seconds, sock_connect=timeout_seconds, sock_read=timeout_seconds
    )
    headers = {"Accept-Encoding": "identity", **(conditional or {})}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, allow_redirects=True) as response,
        ):
            if response.status == 304 and conditional:
                return Downloaded(not_modified=True)
            if response.status != 200:
                raise ArtifactError(f"HTTP GET {display} returned {response.status} {response.reason or ''}".rstrip())
            if response.content_length is not None and response.content_length > max_bytes:
                raise ArtifactError(
                    f"HTTP GET {display}: the body is {response.content_length} bytes, over the limit of {max_bytes} "
                    "(the per-model size limit, the agent's --max-model-disk, with room for archive headers)"
                )
            sink = await asyncio.to_thread(_Sink, target)
            size = 0
            progress = DownloadProgress(display, response.content_length, every_seconds=progress_every_seconds)
            try:
                pending = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ArtifactError(
                            f"HTTP GET {display}: the body is over the limit of {max_bytes} bytes (the per-model "
                            "size limit, the agent's --max-model-disk, with room for archive headers)"
                        )
                    progress.add(len(chunk))
                    pending += chunk
                    if len(pending) >= CHUNK_BYTES:
                        await asyncio.to_thread(_write, sink, bytes(pending), before_write)
                        pending.clear()
                if pending:
                    await asyncio.to_thread(_write, sink, bytes(pending), before_write)
            finally:
                digest = await asyncio.to_thread(sink.close)
            progress.finish()
            return Downloaded(
                not_modified=False,
                sha256=digest,
                size=size,
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
            )
    except ArtifactError:
        raise
    except TimeoutError:
        raise ArtifactError(
            f"HTTP GET {display} timed out: no connection, response or data within {timeout_seconds:g}s"
        ) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise ArtifactError(f"HTTP GET {display} failed: {_message(exc, url, display)}") from None
