"""The registry process: migrate the database, serve the REST API, fail overdue splits now and then, and (with a
scheduler) follow what the scheduler serves of what it deployed (registry/service/serving.py).

It holds nothing a restart loses: every accepted call is committed before it is answered, and a split whose
computation a stop interrupted is failed (at the stop, or by the next registry to look: splits.expire_overdue).
SIGTERM/SIGINT stop it: the listener closes, calls in flight finish (up to a grace), then it exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aiohttp import web
from sqlalchemy.exc import OperationalError

from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck
from modelplane.auth.http_access import protect
from modelplane.http_site import serve_runner
from modelplane.ready_file import write_ready_file
from modelplane.signals import stop_on_signals
from modelplane.transport import http_server_ssl
from registry.api.app import build_app
from registry.api.registry_metrics import RegistryMetrics
from registry.errors import RegistryError
from registry.ports import Deployer, ServingFollower, SplitMaker, TrafficRouter, TrainingLauncher
from registry.service.context import ServiceContext
from registry.service.registry_service import RegistryService
from registry.service.splits import EXPIRY_INTERVAL_SECONDS
from registry.service.trainer_runs import TrainerRunsService
from registry.settings import RegistrySettings
from registry.store import schema
from registry.store.database import Store, open_engine, shown
from registry.trainer_runs.consumer import TrainerRunsConsumer

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS: Final = 10.0


class RegistryStartError(RuntimeError):
    """The registry cannot start: its database cannot be reached or migrated."""


def _migrate(settings: RegistrySettings) -> None:
    try:
        schema.upgrade(settings.database)
    except OperationalError as error:
        raise RegistryStartError(f"cannot open the database {shown(settings.database)}: {error.orig}") from None


async def _expire_overdue_work(service: RegistryService, stop: asyncio.Event) -> None:
    """Fail the splits and training runs whose registry stopped before they finished (see splits.py, training.py)."""
    while not stop.is_set():
        try:
            splits = await service.splits.expire_overdue()
            runs = await service.training.expire_overdue()
        except RegistryError as error:  # the database away for a while: try again at the next round
            log.warning("registry: could not look for overdue splits and training runs: %s", error.message)
        else:
            if splits or runs:
                log.info("registry: failed %d split(s) and %d training run(s) that never finished", splits, runs)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EXPIRY_INTERVAL_SECONDS)


async def run(
    settings: RegistrySettings,
    stop: asyncio.Event | None = None,
    *,
    split_maker: SplitMaker | None = None,
    launcher: TrainingLauncher | None = None,
    deployer: Deployer | None = None,
    serving: asyncio.Future[Address] | None = None,
    traffic: TrafficRouter | None = None,
    follower: ServingFollower | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``). The ports are the composition root's to give (modelplane/cli);
    without them, splits, training, deploying and promotions answer 503. ``serving`` is given the address bound once
    the API answers (``modelplane up`` embeds the registry and prints it)."""
    if stop is None:
        stop = asyncio.Event()
        stop_on_signals(stop)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.datasets_root.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_migrate, settings)
    store = Store(open_engine(settings.database))
    context = ServiceContext(
        store=store,
        datasets_root=settings.datasets_root,
        splits_dir=settings.splits_dir,
        split_timeout_seconds=settings.split_timeout_seconds,
        training_timeout_seconds=settings.training_timeout_seconds,
        split_maker=split_maker,
        launcher=launcher,
        deployer=deployer,
        traffic=traffic,
        deploy_timeout_seconds=settings.deploy_timeout_seconds,
    )
    service = RegistryService(context)
    await _nothing_served_known(service, follower is not None)
    app = protect(build_app(service, RegistryMetrics()), AccessCheck(settings.auth))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    try:
        listen = await serve_runner(runner, settings.listen, http_server_ssl(settings.serving))
    except BaseException:
        store.close()
        raise
    expiring = asyncio.create_task(_expire_overdue_work(service, stop), name="registry-expiry")
    consuming: asyncio.Task[None] | None = None
    consumer_stop = asyncio.Event()  # its own: ``stop`` may be the caller's (modelplane up), not ours to set
    follow_stop = asyncio.Event()
    following = asyncio.create_task(_follow_serving(service, follower, follow_stop), name="registry-serving")
    if settings.trainer_runs is not None and settings.model_store is not None:  # settings.py requires both
        consumer = TrainerRunsConsumer(settings.trainer_runs, settings.model_store, TrainerRunsService(context))
        consuming = asyncio.create_task(consumer.run(consumer_stop), name="registry-trainer-runs")
    log.info("registry: REST API on %s; database %s", listen, shown(settings.database))
    try:
        if settings.ready_file is not None:
            write_ready_file(settings.ready_file, {"listen": str(listen)})
        if serving is not None and not serving.done():
            serving.set_result(listen)
        await stop.wait()
        log.info("registry stopping")
    finally:
        await runner.cleanup()
        await service.close()
        await _stop_task(consuming, consumer_stop)
        await _stop_task(following, follow_stop)
        expiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiring
        store.close()


async def _nothing_served_known(service: RegistryService, following: bool) -> None:
    """Before the API answers: what a stopped registry recorded is not shown as current. Every followed name is
    unknown until the scheduler says otherwise (for good, with no scheduler to follow)."""
    if following:
        why = "not yet heard from the scheduler since the registry started"
    else:
        why = "this registry follows no scheduler (no --scheduler)"
    try:
        await service.serving.unknown(why)
    except RegistryError as error:
        log.warning("registry: could not mark what the scheduler serves as unknown: %s", error.message)


async def _follow_serving(service: RegistryService, follower: ServingFollower | None, stop: asyncio.Event) -> None:
    """The follower until ``stop``. It does not raise; should it anyway, the registry goes on serving (its log says
    why) and every followed name is unknown from then on."""
    if follower is None:
        return
    try:
        await follower.follow(service.serving, stop)
    except Exception as error:
        log.exception("registry: following what the scheduler serves failed")
        with contextlib.suppress(RegistryError):
            await service.serving.unknown(f"the registry stopped following the scheduler: {type(error).__name__}")


async def _stop_task(task: asyncio.Task[None] | None, stop: asyncio.Event) -> None:
    """Stop a background part (the consumer of the trainer's runs, the follower of the scheduler) at its next step:
    a record of the consumer's not finished is read again by the next registry (its offset is not committed);
    cancelled if it does not stop within the grace (a Kafka client still connecting)."""
    if task is None:
        return
    stop.set()
    await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_SECONDS)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
