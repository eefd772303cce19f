"""The page and its event stream (aiohttp). Read-only: GET only, no route changes anything.

- ``GET /``: the page (static/index.html), its script and style under ``/static/``: files shipped in this package,
  read once at start (no build step, nothing read from disk per request, no path from the request ever opened).
- ``GET /events``: server-sent events: ``snapshot`` (everything, at once), then ``changes`` (a list of
  {kind, name, view}, view null when an object is gone). A browser that falls behind or stops reading is dropped;
  its EventSource reconnects and starts again from a snapshot.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources

from aiohttp import web

from dashboard.live_board import LiveBoard, TooManyWatchersError

# A comment line every so often: proxies keep the stream open, and a page closed without a word is noticed (the
# write fails) and its slot of the board's max_watchers given back within this long.
HEARTBEAT_SECONDS = 15.0
WRITE_TIMEOUT_SECONDS = 10.0  # a browser that takes longer to take one batch is dropped

_STATIC = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_SECURITY_HEADERS = {
    # Only the page's own files; nothing inline, nothing framed: names on the page are other people's text.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _read_static(name: str) -> bytes:
    return resources.files("dashboard").joinpath("static", name).read_bytes()


def _event(name: str, data: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def build_app(board: LiveBoard, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> web.Application:
    page = _read_static("index.html")
    files = {name: (_read_static(name), content_type) for name, content_type in _STATIC.items()}

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS)

    async def static(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such file")
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_SECURITY_HEADERS)

    async def events(request: web.Request) -> web.StreamResponse:
        try:
            snapshot, watcher = board.watch()
        except TooManyWatchersError as error:
            raise web.HTTPServiceUnavailable(text=str(error)) from None
        try:
            response = web.StreamResponse(
                headers={**_SECURITY_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
            )
            await response.prepare(request)
            await asyncio.wait_for(response.write(_event("snapshot", snapshot)), WRITE_TIMEOUT_SECONDS)
            while True:
                try:
                    changes = await asyncio.wait_for(watcher.next_changes(), heartbeat_seconds)
                except TimeoutError:
                    await asyncio.wait_for(response.write(b": still here\n\n"), WRITE_TIMEOUT_SECONDS)
                    continue
                if watcher.dropped:
                    break
                batch = _event("changes", [change.to_json() for change in changes])
                await asyncio.wait_for(response.write(batch), WRITE_TIMEOUT_SECONDS)
        except (ConnectionError, TimeoutError):
            pass  # the browser went away or stopped reading: its stream ends here
        finally:
            board.unwatch(watcher)
        return response

    app = web.Application(client_max_size=1024)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/events", events)
    return app
