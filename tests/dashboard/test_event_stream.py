"""The page's HTTP side over real sockets: a browser that stops reading is dropped while another keeps getting
every change and the board is never held up; the number of open streams is bounded; nothing but GET is served,
and no request, however odd, gets a server error."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.board_state import Kind
from dashboard.live_board import LiveBoard
from dashboard.web_app import build_app
from modelplane.addresses import Address
from modelplane.http_site import serve_runner
from tests.support.waiting import wait_for

BIG = "x" * 64 * 1024  # one view this big: a reader that stops fills the socket's buffers in a few changes


@pytest.fixture
async def served() -> AsyncIterator[tuple[LiveBoard, str]]:
    board = LiveBoard(max_queued=4, max_watchers=3)
    # A short heartbeat: a closed page is noticed at the next one (test_open_streams_are_bounded waits for that).
    runner = web.AppRunner(build_app(board, heartbeat_seconds=0.5), shutdown_timeout=1.0)
    address = await serve_runner(runner, Address("127.0.0.1", 0))
    try:
        yield board, f"http://{address}"
    finally:
        board.close()
        await runner.cleanup()


async def _read_changes(response: aiohttp.ClientResponse, seen: list[dict[str, object]]) -> None:
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "changes":
            seen.extend(json.loads(line.removeprefix("data: ")))


async def test_a_browser_that_stops_reading_is_dropped_and_the_others_get_every_change(
    served: tuple[LiveBoard, str],
) -> None:
    board, url = served
    host, port = url.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, int(port)))
    stalled.sendall(b"GET /events HTTP/1.1\r\nHost: dashboard\r\n\r\n")  # and never read a byte
    seen: list[dict[str, object]] = []
    async with aiohttp.ClientSession() as session, session.get(url + "/events") as reader:
        reading = asyncio.create_task(_read_changes(reader, seen))
        try:
            await wait_for(lambda: board.watchers == 2, 30, "both streams open")
            number = 0
            while board.watchers == 2:  # each put returns at once: the stalled one never holds the board up
                board.put(Kind.MODEL, f"m{number}", {"n": number, "bulk": BIG})  # each its own object: none coalesced
                number += 1
                await asyncio.sleep(0.01)  # the streams' handlers run
                assert number < 5000, "the stalled browser was never dropped"
            board.put(Kind.MODEL, f"m{number}", {"n": number, "bulk": BIG})
            await wait_for(lambda: bool(seen) and seen[-1]["view"]["n"] == number, 60, "the last change")  # type: ignore[index]
            assert [change["view"]["n"] for change in seen] == list(range(number + 1))  # type: ignore[index]
            assert board.watchers == 1
        finally:
            reading.cancel()
            stalled.close()


async def test_open_streams_are_bounded(served: tuple[LiveBoard, str]) -> None:
    board, url = served
    async with aiohttp.ClientSession() as session:
        streams = [await session.get(url + "/events") for _ in range(3)]
        try:
            assert all(stream.status == 200 for stream in streams)
            async with session.get(url + "/events") as refused:
                assert refused.status == 503
                assert "at most 3 open pages" in await refused.text()
        finally:
            for stream in streams:
                stream.close()
        await wait_for(lambda: board.watchers == 0, 30, "the closed streams to be let go")
        async with session.get(url + "/events") as again:
            assert again.status == 200


async def test_the_page_and_its_files_are_served_with_a_policy_that_allows_only_its_own(
    served: tuple[LiveBoard, str],
) -> None:
    _, url = served
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/") as page:
            assert page.status == 200
            assert "/static/dashboard.js" in await page.text()
            assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            async with session.get(f"{url}/static/{name}") as file:
                assert (file.status, file.content_type) == (200, kind)
        async with session.get(url + "/static/..%2Fweb_app.py") as outside:
            assert outside.status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_nothing_but_get_is_served(served: tuple[LiveBoard, str], method: str) -> None:
    _, url = served
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/events", "/static/dashboard.js"):
            async with session.request(method, url + path, data=b"{}") as answer:
                assert answer.status == 405, (method, path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "OPTIONS"]),
    path=st.text(min_size=0, max_size=300),
    header=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=2000),
)
async def test_no_request_gets_a_server_error(
    served: tuple[LiveBoard, str], method: str, path: str, header: str
) -> None:
    _, url = served
    async with aiohttp.ClientSession() as session:
        target = url + "/" + urllib.parse.quote(path, safe="")
        async with session.request(method, target, headers={"X-Anything": header}) as answer:
            assert answer.status < 500, (method, target, answer.status)
            if answer.status == 200 and answer.content_type == "text/event-stream":
                answer.close()
        async with session.get(url + "/") as page:  # still serving
            assert page.status == 200
