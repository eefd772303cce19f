"""The Dockerfile, its .dockerignore and docker-compose.yml agree (checked as text: no image is built in CI).

The runtime user owns every folder a volume is mounted on, so a new volume is writable by it (Docker and Podman
give a new volume the ownership of the image's folder); every folder a modelplane command writes is on a
volume; services that share a volume see it at the same path; the build context holds what the Dockerfile copies.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.rendering import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
MODELPLANE = [name for name, service in SERVICES.items() if service.get("image", "").startswith("modelplane")]
WRITTEN_FOLDERS = ("state-dir", "models-dir", "cache-dir", "work-dir", "datasets-root")


def runtime_stage() -> str:
    """The Dockerfile's last stage: what the image is."""
    return DOCKERFILE.rsplit("\nFROM ", 1)[1]


def runtime_user() -> tuple[int, int]:
    match = re.search(r"^USER (\d+):(\d+)$", runtime_stage(), flags=re.MULTILINE)
    assert match, "the image must run as a numeric USER uid:gid (Kubernetes' runAsNonRoot checks a number)"
    return int(match.group(1)), int(match.group(2))


def owned_folders() -> set[PurePosixPath]:
    """Folders the runtime stage creates with `install -d -o UID -g GID` for the runtime user."""
    uid, gid = runtime_user()
    lines = [line for line in runtime_stage().splitlines() if not line.lstrip().startswith("#")]
    stage = "\n".join(lines).replace("\\\n", " ")
    folders: set[PurePosixPath] = set()
    for command in re.split(r"&&|\n", stage):
        words = shlex.split(command.removeprefix("RUN ").strip()) if command.strip() else []
        if words[:2] == ["install", "-d"] and f"-o{uid}" in "".join(words) and f"-g{gid}" in "".join(words):
            folders |= {PurePosixPath(word) for word in words if word.startswith("/")}
    return folders


def mounts(service: dict[str, Any]) -> dict[str, PurePosixPath]:
    """Named volume -> where the service mounts it."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found[source] = PurePosixPath(target)
    return found


def test_the_image_runs_as_an_unprivileged_numeric_user() -> None:
    uid, gid = runtime_user()
    assert uid >= 1000
    assert gid >= 1000
    assert f"--uid {uid}" in runtime_stage()


def test_the_image_owns_the_state_and_model_folders() -> None:
    folders = owned_folders()
    assert {PurePosixPath("/var/lib/modelplane/state"), PurePosixPath("/var/lib/modelplane/models")} <= folders
    workdir = re.findall(r"^WORKDIR (\S+)$", runtime_stage(), flags=re.MULTILINE)[-1]
    assert PurePosixPath(workdir) in folders, "the working folder (relative defaults) must be the user's"


@pytest.mark.parametrize("name", MODELPLANE)
def test_modelplane_volumes_are_mounted_on_folders_the_user_owns(name: str) -> None:
    for volume, target in mounts(SERVICES[name]).items():
        assert target in owned_folders(), f"{name}: volume {volume} on {target}, which the image does not give its user"


@pytest.mark.parametrize("name", MODELPLANE)
def test_folders_a_command_writes_are_on_its_volumes(name: str) -> None:
    service = SERVICES[name]
    on_volumes = list(mounts(service).values())
    for flag in WRITTEN_FOLDERS:
        for arg in service["command"]:
            if arg.startswith(f"--{flag}="):
                path = PurePosixPath(arg.split("=", 1)[1])
                assert any(path.is_relative_to(v) for v in on_volumes), f"{name}: --{flag} {path} is on no volume"


def test_a_shared_volume_is_at_the_same_path_everywhere() -> None:
    """The agent writes the model repository and tells its server the models' paths: both see one folder."""
    where: dict[str, set[PurePosixPath]] = {}
    for service in SERVICES.values():
        for volume, target in mounts(service).items():
            where.setdefault(volume, set()).add(target)
    shared = {volume: targets for volume, targets in where.items() if len(targets) > 1}
    assert not shared, f"mounted at different paths: {shared}"
    agent_models = next(a.split("=", 1)[1] for a in SERVICES["agent"]["command"] if a.startswith("--models-dir="))
    assert agent_models in SERVICES["mlserver"]["command"]


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` (a top-level name) out of the context (its last matching rule wins)."""
    verdict = False
    for pattern in dockerignore():
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.removeprefix("!").removeprefix("**/")):
            verdict = not negated
    return verdict


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, flags=re.MULTILINE)
        for source in line.split()[:-1]
    }
    assert copied, "the Dockerfile copies nothing?"
    for source in copied:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
        assert not ignored(source), f".dockerignore leaves out {source}, which the Dockerfile copies"
    for heavy in (".git", ".venv", ".tools", ".modelplane", "tests", "__pycache__"):
        assert ignored(heavy), f".dockerignore lets {heavy} into the build context"


def test_the_wheelhouse_keeps_no_wheels_in_git() -> None:
    assert "wheelhouse/*.whl" in (REPO / ".gitignore").read_text().splitlines()
