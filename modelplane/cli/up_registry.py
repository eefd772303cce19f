"""The model registry inside ``modelplane up``: ``modelplane registry`` as that command composes it (its ports:
splits in its own process, training as the trainer's run in a child process, deploys through a scheduler), with
up's choices made for it: its REST API on a loopback address, its SQLite database, computed splits and training
runs under up's state directory (``DIR/registry``), plaintext, and deploys to up's own scheduler, served by up's
agent (a run's folder is a ``file://`` artifact that agent reads on this host; with up's trainer, an ``s3://``
folder in the trainer's model store, and the trainer's runs are registered too: ``embedded_settings``).

Its settings come from the registry's own parser (defaults and checks in one place, registry/settings.py), given
only up's flags: the environment's MODELPLANE_REGISTRY_* settings are for a ``modelplane registry`` of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Final

from modelplane.addresses import Address
from registry.settings import RegistrySettings
from registry.settings import build_parser as build_registry_parser
from registry.settings import parse_settings as parse_registry_settings

if TYPE_CHECKING:
    from trainer.settings import TrainerSettings

# Replaced by up's scheduler once it listens (its port may be 0 until then); only there to be a valid flag.
_SCHEDULER_PLACEHOLDER: Final = "127.0.0.1:9004"


def embedded_settings(
    up_state_dir: Path, listen: Address, datasets_root: Path | None, trainer: TrainerSettings | None = None
) -> RegistrySettings:
    """The embedded registry's settings; a mistake is a usage error (exit 2) before anything starts.

    With up's trainer, the registry sees every model it makes (seed 000's flow as well as its own training): it
    reads the trainer's status topic on the trainer's Kafka and the runs from the trainer's model store, which is
    also where the registry's own trained models then go (under its own prefix) and its s3:// datasets come from."""
    parser = build_registry_parser(argparse.ArgumentParser(prog="modelplane up (its registry)"))
    argv = [f"--listen={listen}", f"--state-dir={up_state_dir / 'registry'}", f"--scheduler={_SCHEDULER_PLACEHOLDER}"]
    if datasets_root is not None:
        argv.append(f"--datasets-root={datasets_root}")
    if trainer is not None:
        argv += [
            f"--kafka-bootstrap={trainer.kafka_bootstrap}",
            f"--status-topic={trainer.status_topic}",
            f"--s3-endpoint={trainer.s3.endpoint}",  # replaced below by the trainer's whole store (its credentials)
        ]
    settings = parse_registry_settings(parser, argv, environ={})
    if trainer is None or settings.model_store is None:
        return settings
    store = dataclasses.replace(trainer.s3, prefix=settings.model_store.prefix)
    # Its s3:// models are fetched by up's agent the way the trainer's are: with the trainer's storage secret.
    return dataclasses.replace(settings, model_store=store, deploy_storage_secret=trainer.deploy_storage_secret)


async def serve(
    settings: RegistrySettings, scheduler: Address, stop: asyncio.Event, serving: asyncio.Future[Address]
) -> None:
    """Run the registry until ``stop``, deploying to ``scheduler``; ``serving`` gets its address once it answers."""
    # Imported here: only `modelplane up` with its registry loads the registry's database and the trainer's code.
    from modelplane.cli.registry_ports import serve_registry  # noqa: PLC0415

    await serve_registry(dataclasses.replace(settings, scheduler=scheduler), stop, serving)
