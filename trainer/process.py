"""The trainer process: the consumer loop, the run status API, Redis, the model store and the launcher, wired.

Start-up: Redis answers (the run registry and design schemas live there), the status API listens, the ready
file is written, then the consumer joins its group. SIGTERM/SIGINT: stop taking events, let in-flight runs
finish for up to ``--shutdown-grace`` seconds, cancel the rest (their runs are killed and their claims
released, so they are trained again on the next delivery), commit what finished, exit 0. A second signal
cuts the grace short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis

from modelplane.auth.access_check import AccessCheck
from modelplane.auth_flags import client_token
from modelplane.backoff import Backoff
from modelplane.ready_file import write_ready_file
from modelplane.signals import stop_on_signals
from modelplane.transport import http_server_ssl
from trainer.launchers.base import Launcher
from trainer.service.consumer import TrainerService
from trainer.service.deploy import SchedulerDeployer
from trainer.service.design_store import REDIS_RETRYABLE
from trainer.service.model_store import ModelStore
from trainer.service.status_api import start_status_api
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


def default_launcher(settings: TrainerSettings) -> Launcher:
    """The launcher ``--launcher`` names. Runs read s3:// datasets with the model store's endpoint; a local run
    also gets its credentials (a Job gets them from ``--k8s-env-secret``: never put secrets in a Job spec)."""
    scheme = "https" if settings.s3.secure else "http"
    environment = {
        "MODELPLANE_S3_ENDPOINT": f"{scheme}://{settings.s3.endpoint}",
        "MODELPLANE_S3_SECURE": "true" if settings.s3.secure else "false",
    }
    if settings.kubernetes is not None:
        # Imported here: the kubernetes client is heavy and only this launcher needs it.
        from trainer.launchers.kubernetes_job import KubernetesJobLauncher  # noqa: PLC0415
        from trainer.launchers.kubernetes_manifest import KubernetesJobSettings  # noqa: PLC0415

        options = settings.kubernetes
        return KubernetesJobLauncher(
            KubernetesJobSettings(
                image=options.image,
                work_claim=options.work_claim,
                work_local_root=settings.work_dir,
                namespace=options.namespace,
                service_account=options.service_account,
                dataset_claim=options.dataset_claim,
                dataset_mount_path=options.dataset_mount_path,
                env=environment,
                env_from_secret=options.env_secret,
                connection=options.connection,
            )
        )
    from trainer.launchers.local import LocalLauncherSettings, LocalProcessLauncher  # noqa: PLC0415

    if settings.s3.access_key is not None and settings.s3.secret_key is not None:  # parse_settings sets both
        environment |= {"AWS_ACCESS_KEY_ID": settings.s3.access_key, "AWS_SECRET_ACCESS_KEY": settings.s3.secret_key}
    # The deadline every job.json of this trainer holds (service.py writes it): no run reads it back.
    limits = LocalLauncherSettings(env=environment, timeout_seconds=settings.run_timeout_seconds)
    if settings.launcher == "warm":
        from trainer.launchers.warm import WarmLauncherSettings, WarmProcessLauncher  # noqa: PLC0415

        return WarmProcessLauncher(WarmLauncherSettings(limits=limits))
    return LocalProcessLauncher(limits)


async def _wait_for_redis(client: aioredis.Redis, stop: asyncio.Event) -> bool:
    backoff = Backoff(0.2, 5.0)
    while not stop.is_set():
        try:
            await client.ping()  # type: ignore[misc]  # redis-py types ping as sync-or-async
            return True
        except REDIS_RETRYABLE as error:
            delay = backoff.next()
            log.warning("Redis unreachable; retrying", extra={"fields": {"error": str(error), "retry_in": delay}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return False


async def run(
    settings: TrainerSettings,
    stop: asyncio.Event | None = None,
    *,
    launcher: Launcher | None = None,
    forced: asyncio.Event | None = None,
    started: asyncio.Future[TrainerService] | None = None,
    status_url: asyncio.Future[str] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set, when the caller handles signals). ``started`` gets
    the service and ``status_url`` the status API's URL once it listens (for callers that embed the trainer)."""
    if stop is None:
        stop, forced = asyncio.Event(), asyncio.Event()
        stop_on_signals(stop, forced)
    forced = forced or asyncio.Event()
    status_tls = http_server_ssl(settings.serving)  # before anything starts: unusable TLS files fail at once
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    try:
        if not await _wait_for_redis(client, stop):
            return
        deployer = SchedulerDeployer(
            settings.scheduler,
            settings.security,
            settings.deploy_requirements,
            storage_secret=settings.deploy_storage_secret,
            token=client_token(settings.token_file),
        )
        chosen = launcher or default_launcher(settings)
        service = TrainerService(settings, chosen, client, ModelStore(settings.s3), deployer)

        def health() -> dict[str, Any]:
            return {"consuming": service.consuming, "in_flight": service.in_flight, "instance": service.instance}

        runner, port = await start_status_api(
            settings.status_listen,
            service.registry,
            health,
            status_tls,
            AccessCheck(settings.auth),
            metrics=service.metrics.registry,
        )
        status_address = f"{settings.status_listen.host}:{port}"
        url = f"{'https' if status_tls else 'http'}://{status_address}"
        log.info("run status API listening", extra={"fields": {"address": status_address}})
        try:
            if settings.ready_file is not None:
                write_ready_file(settings.ready_file, {"status": status_address, "status_url": url})
            if status_url is not None and not status_url.done():
                status_url.set_result(url)
            if started is not None and not started.done():
                started.set_result(service)
            consumer = asyncio.create_task(service.run(stop), name="trainer-consumer")
            cut_short = asyncio.create_task(forced.wait())
            await asyncio.wait({consumer, cut_short}, return_when=asyncio.FIRST_COMPLETED)
            if not consumer.done():
                # A second signal: no grace for in-flight runs.
                service.cut_grace()
                await consumer
            cut_short.cancel()
            consumer.result()
        finally:
            await runner.cleanup()
            close = getattr(chosen, "aclose", None)
            if launcher is None and close is not None:
                await close()  # the warm launcher's fork server (in-flight runs were finished or cancelled above)
    finally:
        await client.aclose()
    log.info("trainer stopped")
