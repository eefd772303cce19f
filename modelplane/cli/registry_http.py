"""The registry's REST API as the ``modelplane registry`` client commands call it: one call, its JSON answer, and
every way it can fail as a RegistryCallError in words (the registry's own ``{"error": ...}`` reason, or why it
could not be reached), with the exit status it means: 2 for what the registry refused as malformed (400, 413),
1 for the rest. A command opens one RegistryHttp (``async with``): its calls share one HTTP session, so a
``--wait`` that polls reuses one connection rather than opening one per call."""

from __future__ import annotations

import json
import ssl
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import aiohttp

from modelplane.bounded_text import cut, one_line
from modelplane.command_line import EXIT_FAILURE, EXIT_USAGE
from modelplane.spec.registry_api import TOTAL_COUNT_HEADER

MAX_SHOWN_CHARS: Final = 1000  # of an answer that is not the registry's JSON error
MALFORMED_STATUSES: Final = frozenset({400, 413})


class RegistryCallError(Exception):
    def __init__(self, message: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any
    total: int | None  # the X-Total-Count of a list


def path_of(*segments: str) -> str:
    """``/experiments/{name}/...`` with every segment quoted: a name with a / or ? stays one segment."""
    return "/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)


@dataclass(slots=True)
class RegistryHttp:
    base: str  # http(s)://HOST:PORT, no trailing /
    timeout: float  # each call's deadline
    ssl_context: ssl.SSLContext | None = None
    token: str | None = None
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    async def __aenter__(self) -> Self:
        # trust_env=False: a loopback registry must not be reached through a proxy from the environment.
        self._session = aiohttp.ClientSession(trust_env=False)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, document: Any = None, query: dict[str, str] | None = None) -> Answer:
        if self._session is None:
            raise RuntimeError("RegistryHttp.call outside its `async with`")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = self.base + path
        try:
            async with self._session.request(
                method,
                url,
                json=document,
                params=query or None,
                headers=headers,
                ssl=True if self.ssl_context is None else self.ssl_context,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                text = await response.text(errors="replace")
                total = response.headers.get(TOTAL_COUNT_HEADER)
                status = response.status
        except TimeoutError:
            raise RegistryCallError(f"{method} {url}: no answer within {self.timeout:g}s (--timeout)") from None
        except (aiohttp.ClientError, OSError) as error:
            reason = one_line(str(error)) or type(error).__name__
            raise RegistryCallError(f"cannot reach the registry at {self.base}: {reason}") from None
        body = _json_or_text(text)
        if status >= 400:
            raise RegistryCallError(_refusal(method, path, status, body), _exit_status(status))
        return Answer(status, body, int(total) if total is not None and total.isdigit() else None)


def _json_or_text(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return cut(one_line(text), MAX_SHOWN_CHARS)


def _refusal(method: str, path: str, status: int, body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        reason = body["error"]
    else:
        reason = cut(one_line(str(body)), MAX_SHOWN_CHARS) if body else "no reason given"
    return f"{method} {path}: {status}: {reason}"


def _exit_status(status: int) -> int:
    return EXIT_USAGE if status in MALFORMED_STATUSES else EXIT_FAILURE
