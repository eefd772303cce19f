"""The dashboard process: the page served on its address, fed by the scheduler's streams and, when given, the
gateway's metrics and the trainer's runs, until stopped. Also run inside ``modelplane up``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import web

from dashboard.http_sources import GatewayMetricsPoller, TrainerRunsPoller, runs_url
from dashboard.live_board import LiveBoard
from dashboard.scheduler_feed import SchedulerFeed
from dashboard.settings import DashboardSettings
from dashboard.web_app import build_app
from modelplane.addresses import Address
from modelplane.auth_flags import client_token
from modelplane.http_site import serve_runner
from modelplane.signals import stop_on_signals
from modelplane.transport import http_client_ssl

log = logging.getLogger(__name__)


async def run(
    settings: DashboardSettings,
    stop: asyncio.Event | None = None,
    serving: asyncio.Future[Address] | None = None,
) -> None:
    """Serve until ``stop`` (None: until SIGINT/SIGTERM); ``serving`` gets the address once the page is served."""
    settings.security.validate()
    settings.security.check_plaintext_allowed([settings.scheduler])  # before serving: a mistake is said at once
    token = client_token(settings.token_file)
    board = LiveBoard()
    runner = web.AppRunner(build_app(board), shutdown_timeout=2.0)
    address = await serve_runner(runner, settings.listen)
    http_ssl = http_client_ssl(settings.security.ca_file, settings.security.cert_file, settings.security.key_file)
    sources = [SchedulerFeed(board, settings.scheduler, settings.security, token).run()]
    if settings.gateway_metrics_url is not None:
        sources.append(
            GatewayMetricsPoller(board, settings.gateway_metrics_url, settings.poll_seconds, http_ssl, None).run()
        )
    if settings.trainer_url is not None:
        sources.append(
            TrainerRunsPoller(board, runs_url(settings.trainer_url), settings.poll_seconds, http_ssl, token).run()
        )
    tasks = [asyncio.create_task(source) for source in sources]
    try:
        url = f"http://{address}/"
        log.info("serving %s", url)
        if settings.ready_file is not None:
            settings.ready_file.write_text(json.dumps({"url": url}) + "\n")
        if serving is not None:
            serving.set_result(address)
        if stop is None:
            stop = asyncio.Event()
            stop_on_signals(stop)
        await _until(stop, tasks)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        board.close()
        await runner.cleanup()


async def _until(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Until ``stop``; a source that ends by itself (a bug) ends the dashboard with its error."""
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    for task in done:
        if task is not stopping:
            task.result()
            raise RuntimeError("a dashboard source stopped by itself")
