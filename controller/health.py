"""The controller's health listener (``--health-listen``): ``GET /healthz`` answers 200 while the process runs,
``GET /readyz`` 200 once every watched kind has been listed and the scheduler's control-plane stream is open,
503 with the reason otherwise. For Kubernetes' liveness and readiness probes; it serves nothing else."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from modelplane.addresses import Address
from modelplane.http_site import serve_runner
from modelplane.transport import TransportSecurity, http_server_ssl

# Why the controller is not ready, or None when it is.
ReadinessCheck = Callable[[], str | None]


def build_app(not_ready: ReadinessCheck) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = not_ready()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_health_listener(
    address: Address, security: TransportSecurity, not_ready: ReadinessCheck
) -> tuple[web.AppRunner, Address]:
    """Serving on ``address`` (port 0 picks one): the runner to clean up and the address bound."""
    context = http_server_ssl(security)
    runner = web.AppRunner(build_app(not_ready), access_log=None, handle_signals=False)
    return runner, await serve_runner(runner, address, context)
