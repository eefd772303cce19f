"""What ``modelplane registry`` is given to act on the world: the registry's ports (registry/ports.py) filled in
here, at the composition root, because some of them are other processes' code (the trainer's run) that the
registry itself may not import."""

from __future__ import annotations

from dataclasses import dataclass

from registry.dataset_splits import DatasetSplitMaker
from registry.ports import Deployer, SplitMaker, TrainingLauncher
from registry.settings import RegistrySettings


@dataclass(frozen=True, slots=True)
class RegistryPorts:
    split_maker: SplitMaker | None
    launcher: TrainingLauncher | None
    deployer: Deployer | None


def registry_ports(settings: RegistrySettings) -> RegistryPorts:
    # Splits are computed in the registry's own process (registry/data), in worker threads.
    return RegistryPorts(split_maker=DatasetSplitMaker(), launcher=None, deployer=None)
