"""The model registry inside ``modelplane up``: ``modelplane registry`` as that command composes it (its ports:
splits in its own process, training as the trainer's run in a child process, deploys through a scheduler), with
up's choices made for it: its REST API on a loopback address, its SQLite database, computed splits and training
runs under up's state directory (``DIR/registry``), plaintext, and deploys to up's own scheduler, served by up's
agent (a run's folder is a ``file://`` artifact that agent reads on this host).

Its settings come from the registry's own parser (defaults and checks in one place, registry/settings.py), given
only up's flags: the environment's MODELPLANE_REGISTRY_* settings are for a ``modelplane registry`` of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import Final

from modelplane.addresses import Address
from registry.settings import RegistrySettings
from registry.settings import build_parser as build_registry_parser
from registry.settings import parse_settings as parse_registry_settings

# Replaced by up's scheduler once it listens (its port may be 0 until then); only there to be a valid flag.
_SCHEDULER_PLACEHOLDER: Final = "127.0.0.1:9004"


def embedded_settings(up_state_dir: Path, listen: Address, datasets_root: Path | None) -> RegistrySettings:
    """The embedded registry's settings; a mistake is a usage error (exit 2) before anything starts."""
    parser = build_registry_parser(argparse.ArgumentParser(prog="modelplane up (its registry)"))
    argv = [f"--listen={listen}", f"--state-dir={up_state_dir / 'registry'}", f"--scheduler={_SCHEDULER_PLACEHOLDER}"]
    if datasets_root is not None:
        argv.append(f"--datasets-root={datasets_root}")
    return parse_registry_settings(parser, argv, environ={})


async def serve(
    settings: RegistrySettings, scheduler: Address, stop: asyncio.Event, serving: asyncio.Future[Address]
) -> None:
    """Run the registry until ``stop``, deploying to ``scheduler``; ``serving`` gets its address once it answers."""
    # Imported here: only `modelplane up` with its registry loads the registry's database and the trainer's code.
    from modelplane.cli.registry_ports import serve_registry  # noqa: PLC0415

    await serve_registry(dataclasses.replace(settings, scheduler=scheduler), stop, serving)
