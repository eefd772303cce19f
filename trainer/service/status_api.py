"""The trainer's run status API: a small HTTP JSON endpoint, on loopback by default.

- ``GET /healthz``: ``{"status": "ok", "consuming": bool, "in_flight": N, "instance": ID}``.
- ``GET /runs?limit=N``: ``{"runs": [RunRecord, ...]}``, newest first (N from 1 to 1000, default 100).
- ``GET /runs/{run_id}``: one RunRecord (see trainer/service/run_registry.py), or 404.
- ``GET /metrics``: this trainer's Prometheus metrics (trainer/service/trainer_metrics.py).

The records live in Redis, so any replica answers for every replica's runs. Redis being unreachable is a 503
with a message, never a crash. Plain HTTP on purpose: it serves read-only progress, bound to loopback unless
told otherwise; put it behind the platform's proxy to expose it.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck, AuthSettings
from modelplane.auth.http_access import protect
from modelplane.metrics_http import add_metrics_route
from modelplane.whole_numbers import parse_whole_number
from trainer.service.design_store import REDIS_RETRYABLE
from trainer.service.run_registry import RunRegistry

_RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_LIMIT = 1000


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body, indent=2), status=status, content_type="application/json")


def build_app(
    registry: RunRegistry, health: Callable[[], dict[str, Any]], metrics: CollectorRegistry | None = None
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok", **health()})

    async def runs(request: web.Request) -> web.Response:
        limit = parse_whole_number(request.query.get("limit", "100"))
        if limit is None or not 1 <= limit <= MAX_LIMIT:
            return _json({"error": f"limit must be a whole number from 1 to {MAX_LIMIT}"}, 400)
        try:
            records = await registry.list_runs(limit)
        except REDIS_RETRYABLE as error:
            return _json({"error": f"run registry (Redis) unreachable: {error}"}, 503)
        return _json({"runs": [record.to_json() for record in records]})

    async def run(request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if not _RUN_ID.match(run_id):
            return _json({"error": "a run id is 1-128 of A-Z a-z 0-9 . _ -"}, 400)
        try:
            record = await registry.get(run_id)
        except REDIS_RETRYABLE as error:
            return _json({"error": f"run registry (Redis) unreachable: {error}"}, 503)
        if record is None:
            return _json({"error": f"run {run_id} not found"}, 404)
        return _json(record.to_json())

    app = web.Application(client_max_size=1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/runs", runs)
    app.router.add_get("/runs/{run_id}", run)
    if metrics is not None:
        add_metrics_route(app, metrics)
    return app


async def start_status_api(
    address: Address,
    registry: RunRegistry,
    health: Callable[[], dict[str, Any]],
    ssl_context: ssl.SSLContext | None = None,
    access: AccessCheck | None = None,
    *,
    metrics: CollectorRegistry | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve on ``address`` (port 0 picks one), over TLS with ``ssl_context``; returns the runner (to clean
    up) and the bound port."""
    # Every HTTP server passes the access check (modelplane/auth); without one, nothing is refused.
    app = protect(build_app(registry, health, metrics), access or AccessCheck(AuthSettings()))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    port = address.port
    server = site._server
    sockets = getattr(server, "sockets", None)
    if sockets:
        port = int(sockets[0].getsockname()[1])
    return runner, port
