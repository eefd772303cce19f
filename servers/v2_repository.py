"""What the MLServer and Triton adapters share: the V2 REST calls and the repository folder.

Both servers speak the V2 (KServe open inference) REST protocol with the same model-repository
extension and answer failures with ``{"error": "..."}``. Every call here has a timeout, and every
failure becomes a ServerError whose ``retryable`` flag tells the agent whether another try could help:
connection problems, timeouts and 5xx answers may pass; a 4xx answer (a bad model) will not. Each
adapter refines that where its server bends the convention (MLServer answers a model whose own load
raised with a 500 and a plain-text traceback).

Files are placed atomically: the artifact is put into a hidden temporary folder in the repository
(same filesystem) and renamed into place, so a server never sees half a model. An artifact from the
agent's cache is hard-linked, file by file, so the model takes its disk space once; where links cannot be
made (another filesystem, a filesystem without them) it is copied, and the log says so. The files the
adapter writes itself (the server's settings) are always new files, never written through a link.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from servers.adapter import ServerError

log = logging.getLogger(__name__)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_ERROR_TEXT = 2000
_TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished HTTP exchange: the status and the decoded body (JSON when it parses, else text)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_traceback(self) -> bool:
        """A Python traceback as the body: the server's own code (e.g. a model's load) raised."""
        return isinstance(self.body, str) and _TRACEBACK in self.body

    def error_text(self) -> str:
        """What the server said went wrong: the JSON ``error``, or a traceback's final exception line."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            text: str = self.body["error"]
        elif isinstance(self.body, str) and self.is_traceback:
            # The last unindented line of a traceback names the exception that ended it.
            lines = [line for line in self.body.splitlines() if line.strip() and not line[0].isspace()]
            text = lines[-1].strip()
        elif isinstance(self.body, str):
            text = self.body.strip()
        else:
            text = json.dumps(self.body)
        return (text or f"HTTP {self.status}")[:_MAX_ERROR_TEXT]


class V2Http:
    """A V2 REST client for one server. The session is made on first use, inside the running loop."""

    def __init__(self, server: str, http_url: str, *, request_timeout: float) -> None:
        self._server = server
        self._base = http_url.rstrip("/")
        self._timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None

    async def call(self, method: str, path: str, *, body: Any = None, timeout: float | None = None) -> Reply:
        """One request; raises a retryable ServerError when the server cannot be reached in time."""
        if self._session is None or self._session.closed:
            # No keep-alive: these calls are few, and a server that closes the connection after an error
            # (uvicorn does after a 500) must not make the next call fail on a stale pooled connection.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        seconds = self._timeout if timeout is None else timeout
        try:
            async with self._session.request(
                method, f"{self._base}{path}", json=body, timeout=aiohttp.ClientTimeout(total=seconds)
            ) as response:
                return Reply(response.status, _decode(await response.text(errors="replace")))
        except TimeoutError as error:
            raise ServerError(
                f"{self._server} at {self._base} did not answer {method} {path} within {seconds:g}s", retryable=True
            ) from error
        except aiohttp.ClientError as error:
            raise ServerError(
                f"{self._server} at {self._base} is unreachable ({method} {path}): {error}", retryable=True
            ) from error

    async def ready(self, timeout: float = 5.0) -> bool:
        """True when ``/v2/health/ready`` answers 200; any failure to ask is just "not ready"."""
        try:
            return (await self.call("GET", "/v2/health/ready", timeout=timeout)).ok
        except ServerError:
            return False

    async def live(self, timeout: float) -> bool:
        """True when ``/v2/health/live`` answers 200 within ``timeout``; any failure to ask is "not live"."""
        try:
            return (await self.call("GET", "/v2/health/live", timeout=timeout)).ok
        except ServerError:
            return False

    async def index(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The repository index: one entry per model (and version) with ``name`` and, once touched, ``state``."""
        reply = await self.call("POST", "/v2/repository/index", body=body)
        if not reply.ok:
            raise ServerError(
                f"{self._server} repository index failed (HTTP {reply.status}): {reply.error_text()}",
                retryable=reply.status >= 500,
            )
        if not isinstance(reply.body, list):
            raise ServerError(f"{self._server} repository index is not a list: {str(reply.body)[:200]}", retryable=True)
        return [entry for entry in reply.body if isinstance(entry, dict)]

    def failure(
        self, action: str, name: str, reply: Reply, *, model_fault: bool | None = None, hint: str = ""
    ) -> ServerError:
        """The ServerError for a refused operation. By default a 4xx means the model is at fault and the
        rest may pass; ``model_fault`` overrides that when the caller knows better."""
        if model_fault is None:
            model_fault = 400 <= reply.status < 500
        message = f"{self._server} could not {action} model {name!r} (HTTP {reply.status}): {reply.error_text()}"
        return ServerError(f"{message}; {hint}" if hint else message, retryable=not model_fault)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def ready_names(entries: list[dict[str, Any]]) -> list[str]:
    """Names of index entries in state READY, each once, in index order."""
    names = [str(entry["name"]) for entry in entries if entry.get("state") == "READY" and "name" in entry]
    return list(dict.fromkeys(names))


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout: float) -> bool:
    """Await ``check()`` until it returns True (True) or ``timeout`` seconds pass (False); backs off to 0.5 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.02
    while True:
        if await check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
        pause = min(pause * 2, 0.5)


def model_dir(repository: Path, loaded_name: str) -> Path:
    """``repository/<loaded_name>``, refusing names that are not one plain path component."""
    if not _PLAIN_NAME.fullmatch(loaded_name):
        raise ServerError(f"model name {loaded_name!r} is not a plain folder name (letters, digits, '.', '_', '-')")
    return repository / loaded_name


def place_atomically(artifact_dir: Path, target: Path, finish: Callable[[Path], object], *, link: bool = False) -> None:
    """Put ``artifact_dir`` at ``target``: into a hidden temporary sibling (hard links when ``link``, where
    the filesystem allows, else a copy), ``finish(temp)`` (write the server's settings there, with
    ``write_new_file``), then rename into place. An existing ``target`` is replaced."""
    if not artifact_dir.is_dir():
        raise ServerError(f"artifact folder {artifact_dir} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Left by an interrupted placement (placements of one name are not concurrent: the agent serializes them).
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    temp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if not (link and _linked(artifact_dir, temp)):
            shutil.copytree(artifact_dir, temp, symlinks=False)
        finish(temp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, target)
    except OSError as error:
        raise ServerError(f"could not place {artifact_dir} at {target}: {error}", retryable=True) from error
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# Why a hard link could not be made, when a copy still can: another filesystem, a filesystem without
# links, too many links to one file, or a kernel that protects links to files of other users.
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


def _linked(artifact_dir: Path, temp: Path) -> bool:
    """Hard-link every file of ``artifact_dir`` into the new folder ``temp``; False (and nothing left at
    ``temp``) when the filesystem cannot, so the caller copies instead."""
    if artifact_dir.stat().st_dev != temp.parent.stat().st_dev:
        log.warning(
            "copying %s into %s: they are on different filesystems, so the model takes its disk space twice "
            "(put the agent's --cache-dir on the repository's filesystem to link instead)",
            artifact_dir,
            temp.parent,
        )
        return False
    try:
        shutil.copytree(artifact_dir, temp, symlinks=False, copy_function=os.link)
    except shutil.Error as error:  # copytree tries every file, then lists the failures
        failures = error.args[0] if error.args and isinstance(error.args[0], list) else []
        reason = "; ".join(str(failure[2]) for failure in failures[:3])
    except OSError as error:
        if error.errno not in _CANNOT_LINK:
            raise
        reason = str(error)
    else:
        return True
    shutil.rmtree(temp, ignore_errors=True)
    log.warning("copying %s into %s: hard links could not be made (%s)", artifact_dir, temp.parent, reason)
    return False


def write_new_file(path: Path, text: str) -> None:
    """Write ``path`` as a new file, even where a hard link to a cached artifact's file of that name is:
    the cache's file must never change."""
    path.unlink(missing_ok=True)
    path.write_text(text)


def remove_dir(path: Path) -> None:
    """Delete a placed model folder; a missing one is already removed."""
    if path.exists():
        shutil.rmtree(path)
