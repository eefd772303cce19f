"""What ``modelplane registry`` is given to act on the world: the registry's ports (registry/ports.py) filled in
here, at the composition root, because some of them are other processes' code (the trainer's run) that the
registry itself may not import."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from modelplane.addresses import Address
from modelplane.auth_flags import client_token
from modelplane.cli.registry_model_store import RegistryModelStore
from modelplane.cli.registry_training import TrainerRunLauncher
from registry.dataset_splits import DatasetSplitMaker
from registry.ports import Deployer, ServingFollower, SplitMaker, TrafficRouter, TrainingLauncher
from registry.scheduler_deployer import SchedulerDeployer
from registry.scheduler_status_follower import SchedulerStatusFollower
from registry.scheduler_traffic import SchedulerTraffic
from registry.settings import RegistrySettings
from trainer.launchers.local import LocalLauncherSettings, LocalProcessLauncher


@dataclass(frozen=True, slots=True)
class RegistryPorts:
    split_maker: SplitMaker | None
    launcher: TrainingLauncher | None
    deployer: Deployer | None
    traffic: TrafficRouter | None = None
    follower: ServingFollower | None = None  # what the scheduler serves of what the registry deployed


def registry_ports(settings: RegistrySettings) -> RegistryPorts:
    # Splits are computed in the registry's own process (registry/data), in worker threads; each training is the
    # trainer's run in a child process (its deadline, memory limit and process group: trainer/launchers/local.py).
    timeout = settings.training_timeout_seconds
    runs = LocalProcessLauncher(LocalLauncherSettings(timeout_seconds=timeout))
    # With --s3-*, s3:// srcpaths are read from that store and trained models are uploaded to it.
    store = RegistryModelStore(settings.model_store) if settings.model_store is not None else None
    launcher = TrainerRunLauncher(settings.state_dir / "runs", runs, timeout, store)
    deployer = None
    traffic = None
    follower = None
    if settings.scheduler is not None:
        traffic = SchedulerTraffic(
            settings.scheduler,
            settings.scheduler_security,
            settings.deploy_timeout_seconds,
            client_token(settings.token_file),
        )
        deployer = SchedulerDeployer(
            settings.scheduler,
            settings.scheduler_security,
            settings.deploy_requirements or ("sklearn",),
            settings.deploy_timeout_seconds,
            client_token(settings.token_file),
            settings.deploy_storage_secret,
        )
        follower = SchedulerStatusFollower(
            settings.scheduler, settings.scheduler_security, client_token(settings.token_file)
        )
    split_maker = DatasetSplitMaker(settings.datasets_root, s3=settings.model_store)
    return RegistryPorts(
        split_maker=split_maker, launcher=launcher, deployer=deployer, traffic=traffic, follower=follower
    )


async def serve_registry(
    settings: RegistrySettings, stop: asyncio.Event | None = None, serving: asyncio.Future[Address] | None = None
) -> None:
    """Run the registry with every port its settings call for: the one place both ``modelplane registry`` and
    ``modelplane up`` compose it, so neither can leave a port out (a port left out answers 503)."""
    from registry import process as registry_process  # noqa: PLC0415 - the registry's database, only when served

    ports = registry_ports(settings)
    await registry_process.run(
        settings,
        stop,
        split_maker=ports.split_maker,
        launcher=ports.launcher,
        deployer=ports.deployer,
        traffic=ports.traffic,
        follower=ports.follower,
        serving=serving,
    )
