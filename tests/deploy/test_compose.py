"""docker-compose.yml and the Dockerfile, checked as text: no Docker engine runs here (infra.md).

Every modelplane command in the compose file must parse with modelplane's own flags (a renamed flag
breaks this test, not a user's `docker compose up`), every host a command names must be a service, and
the image must copy every package pyproject.toml installs.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import settings as agent_settings
from gateway import settings as gateway_settings
from scheduler import settings as scheduler_settings
from trainer import settings as trainer_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
Parse = Callable[[argparse.ArgumentParser, Sequence[str], Mapping[str, str]], object]
PARSERS: dict[str, tuple[Callable[[argparse.ArgumentParser], argparse.ArgumentParser], Parse]] = {
    "scheduler": (scheduler_settings.build_parser, scheduler_settings.parse_settings),
    "agent": (agent_settings.build_parser, agent_settings.parse_settings),
    "gateway": (gateway_settings.build_parser, gateway_settings.parse_settings),
    "trainer": (trainer_settings.build_parser, trainer_settings.parse_settings),
}
MODELPLANE_SERVICES = [name for name, service in SERVICES.items() if service.get("image", "").startswith("modelplane")]


def test_every_modelplane_process_has_a_service() -> None:
    assert sorted(SERVICES[name]["command"][0] for name in MODELPLANE_SERVICES) == sorted(PARSERS)


@pytest.mark.parametrize("name", MODELPLANE_SERVICES)
def test_each_command_parses_with_modelplanes_own_flags(name: str) -> None:
    service = SERVICES[name]
    command, *argv = service["command"]
    build, parse = PARSERS[command]
    environ = {str(k): str(v) for k, v in (service.get("environment") or {}).items()}
    settings = parse(build(argparse.ArgumentParser(prog=f"modelplane {command}")), argv, environ)
    assert settings is not None


@pytest.mark.parametrize("name", [name for name in MODELPLANE_SERVICES if SERVICES[name].get("depends_on")])
def test_services_depend_on_every_service_they_name(name: str) -> None:
    service = SERVICES[name]
    text = " ".join([*service["command"], *map(str, (service.get("environment") or {}).values())])
    hosts = set(re.findall(r"(?:=|//)([a-z][a-z0-9-]*):\d+", text))
    assert hosts, f"{name} names no other service"
    assert set(service["depends_on"]) <= set(SERVICES)
    assert hosts <= set(service["depends_on"]), (
        f"{name} talks to {sorted(hosts)} but depends on {service['depends_on']}"
    )


def test_third_party_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        image = service.get("image", "")
        assert ":" in image, f"{name}: image {image!r} has no tag"
        assert not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"


def test_the_image_copies_every_installed_package() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, flags=re.MULTILINE))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"
    exposed = {int(port) for port in re.findall(r"\b(\d{4})\b", dockerfile.split("EXPOSE", 1)[1].splitlines()[0])}
    published = {int(port.split(":")[1]) for service in SERVICES.values() for port in service.get("ports", [])}
    assert published <= exposed
