"""Serving a process's Prometheus metrics over HTTP: the one place that turns a ``CollectorRegistry`` into a
``/metrics`` answer, as a route on an aiohttp application a process already serves (the gateway's REST edge, the
agent's inference proxy, the trainer's status API) or as a listener of its own (the scheduler's --metrics-listen).

Each process part keeps its metrics on its own ``CollectorRegistry``, never prometheus_client's global one:
``modelplane up`` runs several parts in one process and the tests run several in one interpreter, and the global
registry refuses a second metric of the same name. Rendering is prometheus_client's own text format (escapes,
HELP/TYPE lines, histogram buckets), done at scrape time only.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from modelplane.addresses import Address
from modelplane.http_site import serve_runner

METRICS_PATH = "/metrics"
# The text format every Prometheus reads (what generate_latest writes for names that are valid without quoting, as
# all of modelplane's are); prometheus_client's CONTENT_TYPE_LATEST names a newer version older servers do not know.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(registries: Iterable[CollectorRegistry]) -> bytes:
    """The text format of every registry given, one after another (their metric names must not overlap)."""
    return b"".join(generate_latest(registry) for registry in registries)


def metrics_handler(*registries: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler answering a scrape with ``registries``' metrics."""

    async def scrape(_request: web.Request) -> web.Response:
        response = web.Response(body=render(registries))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    return scrape


def add_metrics_route(app: web.Application, *registries: CollectorRegistry) -> None:
    """``GET /metrics`` on ``app`` (open to Prometheus without a credential: modelplane/auth/access_table.py)."""
    app.router.add_get(METRICS_PATH, metrics_handler(*registries))


async def serve_metrics(
    address: Address, *registries: CollectorRegistry, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, Address]:
    """A listener of its own serving only ``GET /metrics`` on ``address`` (port 0: the kernel picks one), over TLS
    with ``ssl_context`` (the process's own, from modelplane.transport.http_server_ssl); the runner (clean it up to
    stop) and the address bound. A port in use is a TransportError naming it."""
    app = web.Application()
    add_metrics_route(app, *registries)
    runner = web.AppRunner(app, access_log=None)
    return runner, await serve_runner(runner, address, ssl_context)
