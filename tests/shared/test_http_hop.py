"""modelplane.http_hop, the HTTP/1.1 client of the gateway's and the agent proxy's hops, against real servers on
loopback ports: aiohttp apps for what well-behaved servers do, and raw asyncio servers that write exactly the
bytes a test gives (answers cut short, compressed, chunked, without a length, garbage, connections closed
under a request). Hypothesis sends arbitrary bytes as answers: every request ends in an answer or a HopError."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelplane.http_hop import (
    AnswerTimeoutError,
    BadAnswerError,
    BrokenConnectionError,
    ConnectError,
    HopClient,
    HopError,
    request_target,
)
from tests.support.http_stand_ins import serving

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 whose connections ``handle`` serves byte by byte; yields its base URL."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One request: its request line, headers (lower-case names) and body (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *fields = head[:-4].split(b"\r\n")
    headers = {}
    for field in fields:
        name, _, value = field.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line, headers, body


def answer_bytes(status: int, body: bytes, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def client() -> AsyncIterator[HopClient]:
    made = HopClient(total_timeout=30)
    yield made
    await made.close()


async def test_requests_reuse_one_kept_alive_connection(client: HopClient) -> None:
    peers: list[object] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=b"got " + await request.read(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", echo)
    async with serving(app) as base:
        for index in range(5):
            answer = await client.request("POST", base, "/v2/models/m/infer", body=f"{index}".encode())
            assert (answer.status, answer.body) == (200, f"got {index}".encode())
            assert answer.headers["content-type"] == "application/json"
            assert answer.error_body is None
    assert len(peers) == 5
    assert len(set(peers)) == 1, "every request went over the first connection"


async def test_a_connection_the_server_closed_under_a_request_is_replaced_once(client: HopClient) -> None:
    """The keep-alive race: the server closes a kept connection as the next request goes out. The request is
    sent once more on a new connection; a new connection that closes too is the caller's error."""
    requests = 0

    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(answer_bytes(200, b"first"))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: closed without a byte
        requests += 1

    async with raw_server(first_only) as base:
        assert (await client.request("GET", base, "/a")).body == b"first"
        assert (await client.request("GET", base, "/b")).body == b"first", "answered on a new connection"
        assert requests == 3

    async def never(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(never) as base:
        with pytest.raises(BrokenConnectionError):
            await client.request("GET", base, "/a")


async def test_an_answer_cut_short_is_not_sent_again(client: HopClient) -> None:
    """Once any byte of an answer came back, the server took the request: it is never sent twice."""
    requests = 0

    async def cut_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(answer_bytes(200, b"whole"))
        await writer.drain()
        await read_request(reader)
        requests += 1
        writer.write(answer_bytes(200, b"0123456789")[:-4])  # then the connection closes

    async with raw_server(cut_second) as base:
        assert (await client.request("GET", base, "/a")).body == b"whole"
        with pytest.raises(BrokenConnectionError):
            await client.request("GET", base, "/b")
    assert requests == 2


async def test_bytes_after_an_answer_retire_its_connection(client: HopClient) -> None:
    """A server that writes more than the answer (the start of another one): the next request must not read
    those bytes as its answer, so it goes on a new connection."""

    async def overlong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer_bytes(200, b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nstale")
        await writer.drain()
        await read_request(reader)
        writer.write(answer_bytes(200, b"second"))
        await writer.drain()
        await reader.read()

    async with raw_server(overlong) as base:
        assert (await client.request("GET", base, "/a")).body == b"first"
        assert (await client.request("GET", base, "/b")).body == b"first", "answered on a new connection"


async def test_bodies_by_length_chunked_and_until_the_connection_ends_are_read_whole(client: HopClient) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    until_eof = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    for raw, expected in [(chunked, b"hello world"), (until_eof, b"all of it"), (answer_bytes(201, b"x"), b"x")]:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes = raw) -> None:
            await read_request(reader)
            writer.write(raw)
            await writer.drain()
            if b"Connection: close" in raw:
                writer.close()
            else:
                await reader.read()

        async with raw_server(handle) as base:
            answer = await client.request("POST", base, "/v2/models/m/infer", body=b"{}")
            assert answer.body == expected


async def test_an_error_answer_is_kept_as_an_error_body_and_read_only_up_to_the_limit() -> None:
    limited = HopClient(error_body_limit=1000, total_timeout=30)
    sent = b"Traceback (most recent call last):\n" + b"x" * 200_000

    async def big_error(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer_bytes(500, sent, "Modelplane-Server-Down: 1"))
        await writer.drain()
        await reader.read()

    try:
        async with raw_server(big_error) as base:
            answer = await limited.request("POST", base, "/infer", body=b"{}")
    finally:
        await limited.close()
    assert answer.status == 500
    assert answer.body == b""
    assert answer.error_body is not None
    assert answer.error_body.size == 1000
    assert answer.error_body.text().startswith("Traceback")
    assert answer.headers["modelplane-server-down"] == "1"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (answer_bytes(200, gzip.compress(b'{"outputs": []}', mtime=0), "Content-Encoding: gzip"), "compressed"),
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.1 answer"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "switched"),
    ],
)
async def test_answers_that_cannot_be_passed_on_are_bad_answers(client: HopClient, raw: bytes, words: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await reader.read()

    async with raw_server(handle) as base:
        with pytest.raises(BadAnswerError) as raised:
            await client.request("GET", base, "/v2")
    assert words in str(raised.value)


async def test_no_answer_in_time_and_no_connection_are_told_apart() -> None:
    quick = HopClient(total_timeout=0.5)

    async def silent(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    try:
        async with raw_server(silent) as base:
            with pytest.raises(AnswerTimeoutError):
                await quick.request("GET", base, "/v2")
        with pytest.raises(ConnectError):
            await quick.request("GET", base, "/v2")  # the server is gone: its port refuses
    finally:
        await quick.close()


async def test_head_answers_end_at_their_headers(client: HopClient) -> None:
    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(head) as base:
        answer = await client.request("HEAD", base, "/v2/models/m")
    assert (answer.status, answer.body, answer.headers["content-length"]) == (200, b"", "1000")


async def test_the_request_line_and_headers_are_what_http_allows() -> None:
    seen: list[tuple[bytes, dict[str, str], bytes]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(answer_bytes(200, b""))
            await writer.drain()

    client = HopClient(total_timeout=30)
    try:
        async with raw_server(record) as base:
            await client.request(
                "POST",
                base + "/prefix/",
                request_target("/v2/models/a b/infer", "x=1&y=%20"),
                headers={
                    "X-Request-Id": "abc",
                    "Injected": "a\r\nEvil: 1",
                    "Host": "elsewhere",
                    "Content-Length": "999",
                    "Bad Name": "x",
                },
                body=b"{}",
            )
            with pytest.raises(ValueError, match="request line"):
                await client.request("GET", base, "/a b")
            with pytest.raises(ValueError, match="not an http"):
                await client.request("GET", "ftp://127.0.0.1:1", "/")
    finally:
        await client.close()
    [(line, headers, body)] = seen
    assert line == b"POST /prefix/v2/models/a%20b/infer?x=1&y=%20 HTTP/1.1"
    assert headers["host"] == base.removeprefix("http://")
    assert headers["content-length"] == "2"
    assert headers["x-request-id"] == "abc"
    assert "injected" not in headers
    assert "evil" not in headers
    assert "bad name" not in headers
    assert body == b"{}"


async def test_at_most_the_given_number_of_connections_are_open_at_once() -> None:
    open_now = most = 0
    release, two_open = asyncio.Event(), asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        if most >= 2:
            two_open.set()
        try:
            while True:
                await read_request(reader)
                await release.wait()
                writer.write(answer_bytes(200, b"ok"))
                await writer.drain()
        finally:
            open_now -= 1

    client = HopClient(connections=2, total_timeout=30)
    try:
        async with raw_server(stall) as base:
            requests = [asyncio.create_task(client.request("GET", base, "/")) for _ in range(6)]
            await two_open.wait()  # both connections are made; the other requests wait for one
            release.set()
            answers = await asyncio.gather(*requests)
    finally:
        await client.close()
    assert [answer.body for answer in answers] == [b"ok"] * 6
    assert most == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda status, tail: f"HTTP/1.1 {status} X\r\n".encode() + tail, st.integers(0, 999), st.binary()),
    ),
    close=st.booleans(),
)
async def test_any_bytes_as_an_answer_end_in_an_answer_or_a_hop_error(raw: bytes, close: bool) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        if not close:
            await reader.read()

    client = HopClient(total_timeout=0.2)  # an answer that never ends is AnswerTimeoutError
    try:
        async with raw_server(handle) as base:
            try:
                answer = await client.request("POST", base, "/v2/models/m/infer", body=b"{}")
            except HopError:
                return
            assert 200 <= answer.status <= 999
            assert (answer.error_body is None) == (200 <= answer.status < 300)
    finally:
        await client.close()
