"""The HTTP/1.1 client of the data path's hops: the gateway to the agents' inference proxies, and an agent's
proxy to its inference server. Kept-alive connections per server, the request written in one piece, the
answer parsed by httptools (llhttp, the parser of Node.js and uvicorn).

Why not aiohttp's ClientSession, which these hops used before: an inference request crosses two hops, and
on each the client was the costliest part. aiohttp's client builds a request object, a response object, a
stream reader, timers and tracing hooks for every request; measured under bench/gateway_inference.py it
took about half of each hop's CPU time (bench/README.md). A hop needs less: send bytes, get back a status,
a few headers and the body, on a connection that stays open. What it does:

* Connections are kept per server (scheme, host, port) and reused, most recently used first; at most
  ``connections`` are open at once over all servers (a request waits for one), idle ones are closed after
  :data:`IDLE_SECONDS` (servers close theirs sooner: uvicorn after 5 s, and a connection the server closed
  is dropped when that is seen).
* A request on a reused connection that fails before the first byte of an answer (the server had just
  closed it: the race every keep-alive client has) is sent once more on a new connection. Inference and the
  V2 reads have no side effects, and nothing of the first attempt reached a server that answered.
* Errors say where it failed: :class:`ConnectError` (no connection: refused, unresolvable;
  :class:`ConnectTimeoutError` within ``connect_timeout``), :class:`AnswerTimeoutError` (connected, no whole answer
  within ``total_timeout``), :class:`BrokenConnectionError` (connected, then closed or reset before the answer
  was whole), :class:`BadAnswerError` (bytes that are no HTTP/1.1 answer, or a compressed one: no
  ``Accept-Encoding`` is sent, so a server has no reason to compress).
* A 2xx answer's body is returned whole. Any other answer's body is read into an
  :class:`~modelplane.inference_errors.ErrorBody` (which keeps what a verdict on it needs) up to
  ``error_body_limit`` bytes; past that the connection is closed, the rest unread.
* Header values that HTTP cannot carry as given (control characters) are not sent; callers pass only
  headers they mean to forward.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

import httptools

from modelplane.inference_errors import MAX_ERROR_ANSWER_BYTES, ErrorBody

IDLE_SECONDS: Final = 15.0
# Base URLs whose parsed form is kept (a gateway sees each replica's; replicas come and go).
_KEPT_BASES: Final = 4096
# Characters a path keeps as they are in a request target (RFC 3986's pchar and "/").
_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~"
_TARGET: Final = re.compile(r"/[\x21-\x7e]*")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Headers this client writes itself; a caller's are not sent.
_OWN_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})


class HopError(Exception):
    """A request that got no complete HTTP answer; the message says why, in one line."""


class ConnectError(HopError):
    """No connection could be made (refused, unreachable, unresolvable)."""


class ConnectTimeoutError(ConnectError):
    """No connection was made within the connect timeout."""


class AnswerTimeoutError(HopError):
    """Connected, but the whole answer did not arrive within the total timeout."""


class BrokenConnectionError(HopError):
    """Connected, then the connection closed or broke before the answer was whole."""


class BadAnswerError(HopError):
    """What came back is not an HTTP/1.1 answer this client can pass on."""


@dataclass(frozen=True, slots=True)
class HopAnswer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes  # a 2xx answer's body, whole (empty otherwise)
    error_body: ErrorBody | None  # what is kept of any other answer's body (None for 2xx)


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _base(base_url: str) -> tuple[_Origin, str]:
    """The server of ``base_url`` and the path (encoded, without a final "/") every target goes under."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{base_url[:100]!r} is not an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)  # ValueError for a port out of range
    prefix = quote(parts.path.rstrip("/"), safe=_PATH_SAFE + "%")
    return _Origin(parts.scheme, parts.hostname, port), prefix


class _Connection(asyncio.Protocol):
    """One kept-alive connection: the protocol that parses answers, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[HopAnswer] | None = None
        self._error_body_limit = MAX_ERROR_ANSWER_BYTES
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._error_body: ErrorBody | None = None
        self._headers_done = False
        self._until_eof = False  # the body ends when the connection does (no length, not chunked)
        self._head = False  # the answer to a HEAD request: no body, whatever its length says
        self.got_bytes = False

    # -- the caller's side

    def send(self, request: bytes, *, error_body_limit: int, head: bool) -> asyncio.Future[HopAnswer]:
        """Write ``request``; the future gets the answer (or a HopError)."""
        if self.transport is None or self._answer is not None:
            raise RuntimeError("a request on a connection that is not ready for one")
        self._reset()
        self._error_body_limit = error_body_limit
        self._head = head
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # create_connection makes a Transport

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted with another request
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswerError("the server switched protocols"))
        except httptools.HttpParserError as error:
            self._fail(BadAnswerError(f"not an HTTP/1.1 answer ({error})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is None or self._answer.done():
            return
        if self._until_eof and self._headers_done:
            self._complete(keep_alive=False)
            return
        why = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        self._fail(BrokenConnectionError(f"the connection closed before the answer was whole{why}"))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():
            # An answer nobody asked for, in the same bytes as the last one: what follows on this connection
            # cannot be told apart from it, so the connection is not used again.
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self._headers = {}
            return
        self._status = status
        self._headers_done = True
        encoding = self._headers.get("content-encoding", "identity")
        if encoding.lower() != "identity":
            self._fail(BadAnswerError(f"a compressed answer ({encoding[:40]}), which was not asked for"))
            return
        if not 200 <= status < 300:
            self._error_body = ErrorBody()
        no_body = self._head or status in (204, 304)
        length_known = "content-length" in self._headers or "chunked" in self._headers.get("transfer-encoding", "")
        self._until_eof = not no_body and not length_known
        if no_body:
            self._complete(keep_alive=False)  # HEAD: the parser would wait for the body the length announces

    def on_body(self, chunk: bytes) -> None:
        if self._answer is None or self._answer.done():
            return
        if self._error_body is None:
            self._body += chunk
            return
        room = self._error_body_limit - self._error_body.size
        self._error_body.feed(chunk[:room])
        if self._error_body.size >= self._error_body_limit:
            self._complete(keep_alive=False)  # the rest is not read

    def on_message_complete(self) -> None:
        if not self._headers_done:
            return  # the end of a 1xx answer
        if self._answer is not None and not self._answer.done():
            self._complete(keep_alive=self._parser.should_keep_alive())

    def _complete(self, *, keep_alive: bool) -> None:
        answer = self._answer
        self._answer = None
        if not keep_alive:
            self.close()
        if answer is not None and not answer.done():
            body = bytes(self._body) if self._error_body is None else b""
            answer.set_result(HopAnswer(self._status, self._headers, body, self._error_body))

    def _fail(self, error: HopError) -> None:
        answer = self._answer
        self._answer = None
        self.close()
        if answer is not None and not answer.done():
            answer.set_exception(error)


class HopClient:
    """Requests to HTTP/1.1 servers over kept-alive connections (see the module's docstring)."""

    def __init__(
        self,
        *,
        connections: int = 256,
        total_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        error_body_limit: int = MAX_ERROR_ANSWER_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.total_timeout = total_timeout
        self.connect_timeout = min(connect_timeout, total_timeout)
        self._error_body_limit = error_body_limit
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(connections)
        self._idle: dict[_Origin, collections.deque[_Connection]] = {}
        self._bases: dict[str, tuple[_Origin, str]] = {}
        self._busy: set[_Connection] = set()
        self._swept = time.monotonic()

    async def request(
        self, method: str, base_url: str, target: str, *, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> HopAnswer:
        """``method target`` on the server at ``base_url`` (scheme, host, port, and a path put before ``target``).
        ``target`` is the path with its query as it goes on the request line (:func:`request_target` makes
        one). Raises HopError subclasses; ValueError for a URL that is not http(s), a target or method that
        cannot go on a request line."""
        base = self._bases.get(base_url)
        if base is None:
            if len(self._bases) >= _KEPT_BASES:
                self._bases.clear()
            base = self._bases[base_url] = _base(base_url)
        origin, prefix = base
        request = _request_bytes(method, origin, prefix + target, headers or {}, body)
        head = method.upper() == "HEAD"
        async with self._slots:
            try:
                async with asyncio.timeout(self.total_timeout):
                    return await self._exchange(origin, request, head)
            except TimeoutError:
                raise AnswerTimeoutError(f"no answer within {self.total_timeout:g}s") from None

    async def _exchange(self, origin: _Origin, request: bytes, head: bool) -> HopAnswer:
        connection = self._take_idle(origin)
        if connection is not None:
            try:
                return await self._send_on(origin, connection, request, head)
            except BrokenConnectionError:
                if connection.got_bytes:
                    raise
                # The server closed this kept-alive connection as the request went out: once more, anew.
        return await self._send_on(origin, await self._connect(origin), request, head)

    async def _send_on(self, origin: _Origin, connection: _Connection, request: bytes, head: bool) -> HopAnswer:
        self._busy.add(connection)
        try:
            answer = await connection.send(request, error_body_limit=self._error_body_limit, head=head)
        except BaseException:
            connection.close()  # cancelled or failed mid-answer: its state is unknown
            raise
        finally:
            self._busy.discard(connection)
        if not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, collections.deque()).append(connection)
        return answer

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        now = time.monotonic()
        if now - self._swept > IDLE_SECONDS:
            self._sweep(now)
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        return None

    def _sweep(self, now: float) -> None:
        """Close connections idle too long, for every server (those no longer asked for too)."""
        self._swept = now
        for origin, idle in list(self._idle.items()):
            kept = collections.deque(c for c in idle if not c.closed and now - c.idle_since < IDLE_SECONDS)
            for connection in idle:
                if connection not in kept:
                    connection.close()
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=context, server_hostname=origin.host if context else None
                )
        except TimeoutError:
            raise ConnectTimeoutError(f"no connection within {self.connect_timeout:g}s") from None
        except OSError as error:  # refused, unreachable, unresolvable, a TLS handshake that failed
            raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {error}") from None
        return connection

    async def close(self) -> None:
        """Close every connection (requests still in flight on them fail with BrokenConnectionError)."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def request_target(path: str, query: str = "") -> str:
    """A request line's target: ``path`` (decoded text) percent-encoded, and ``query`` (already encoded, as it
    came on a request) after a ``?`` when there is one."""
    target = quote(path, safe=_PATH_SAFE)
    return f"{target}?{query}" if query else target


def _request_bytes(method: str, origin: _Origin, target: str, headers: dict[str, str], body: bytes) -> bytes:
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"{method!r} is not an HTTP method")
    if not _TARGET.fullmatch(target):
        raise ValueError(f"{target[:100]!r} cannot go on a request line")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}"]
    for name, value in headers.items():
        if name.lower() in _OWN_HEADERS or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            continue
        lines.append(f"{name}: {value}")
    if body or method.upper() in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
    return head + body if body else head
