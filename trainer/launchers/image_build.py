"""The container image a training run executes in (seeds/000 step 4, "Create Docker Image of model training").

From a schema's ``ModelAssembly`` it generates a Dockerfile and a build context:

- ``FROM`` a configurable base image (default ``python:3.11-slim``);
- ``requirements.txt`` pinning the framework (``MODEL_FRAMEWORK_SKLEARN``/``_DEFAULT`` ->
  ``scikit-learn==<framework_version>``, default the scikit-learn installed here, which is the one the
  MLServer venv serves with) plus ``ModelDependencies`` (``name``/``version`` and ``packages``), each
  validated as a *plain* requirement: a name, optional extras and version specifiers; no URLs, no pip
  options, no environment markers, no shell metacharacters;
- optionally ``RUN python -m pip install -r requirements.txt`` (exec form: no shell);
- the modelplane ``trainer/run/`` code (what a run executes; not the service that schedules runs), ``generated/``
  protos and the few other modules a run imports (``SOURCE_PATHS``);
  ``ENTRYPOINT ["python", "-m", "trainer.run.run_job"]``;
- labels: ``org.opencontainers.image.*`` and ``io.modelplane.design-token``, ``io.modelplane.design-version``,
  ``io.modelplane.framework``, ``io.modelplane.framework-version``; the build adds
  ``io.modelplane.content-hash`` (a hash of the whole context), so an image whose tag exists with the same
  hash is not rebuilt.

The tag is ``<registry prefix>/modelplane-train-<sanitised design token>:<sanitised design version>``. It is
built through the Docker Engine API with the ``docker`` SDK (Docker, or Podman's compatible service), in a
thread, since the SDK blocks. A failed build raises :class:`ImageBuildError` with the build log's tail; a
schema no image can be made for raises :class:`InvalidImageSpec` (a ValueError: bad input, permanent).

Tested here: the Dockerfile and requirements text, and a real build through Podman's Docker API of a
``FROM scratch`` image with ``install_dependencies=False`` (no base image can be pulled and no package
index reached on the test machine), so the pins travel as ``requirements.txt`` and labels. The
``RUN pip install`` path is only tested as text.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from generated.mlops.training.v1 import training_pb2

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
IMAGE_HOME = "/opt/modelplane"  # where the code lives in the image (its PYTHONPATH)
# What `python -m trainer.run.run_job` imports from this repository, folders and single files: of servers/ only the
# designed_model package and its entry module, which a run copies into the model's folder (servers becomes a
# namespace package in the image); of modelplane/ only the S3 client, the whole-number check the dataset reader uses
# and the algorithm catalogue (with the text cut its messages use), so that editing the rest of modelplane does not
# change every training image.
SOURCE_PATHS = (
    "trainer/__init__.py",
    "trainer/run",
    "generated",
    "servers/designed_model",
    "servers/designed_model_entry.py",
    "modelplane/__init__.py",
    "modelplane/s3.py",
    "modelplane/whole_numbers.py",
    "modelplane/spec/__init__.py",
    "modelplane/spec/training_algorithms.py",
    "modelplane/bounded_text.py",
)
CONTENT_HASH_LABEL = "io.modelplane.content-hash"
MAX_DEPENDENCIES = 100
MAX_REQUIREMENT_LENGTH = 200

_SKLEARN_TYPES = (training_pb2.MODEL_FRAMEWORK_SKLEARN_DEFAULT, training_pb2.MODEL_FRAMEWORK_SKLEARN)
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"[A-Za-z0-9*](?:[A-Za-z0-9.*+!_-]*[A-Za-z0-9*])?"
_SPECIFIER = rf"(?:===|==|!=|~=|<=|>=|<|>)\s*{_VERSION}"
_REQUIREMENT = re.compile(
    rf"(?P<name>{_NAME})\s*(?P<extras>\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?\s*"
    rf"(?P<specifiers>{_SPECIFIER}(?:\s*,\s*{_SPECIFIER})*)?"
)
_FRAMEWORK_VERSION = re.compile(r"\d+(?:\.\d+)*(?:[A-Za-z0-9.+!_-]*[A-Za-z0-9])?")


class InvalidImageSpec(ValueError):  # noqa: N818 - a ValueError by design: callers treat it as bad input
    """The schema asks for an image that cannot or must not be built (an unsafe dependency, an unknown framework)."""


class ImageBuildError(RuntimeError):
    """The engine refused or failed the build; the message carries the build log's tail."""


@dataclass(frozen=True)
class ImageBuildSettings:
    """How training images are built. Every field is a documented trainer knob."""

    docker_url: str = "unix:///var/run/docker.sock"  # Docker, or Podman's `podman system service` socket
    registry_prefix: str = "localhost/modelplane"  # the tag's registry and namespace
    base_image: str = "python:3.11-slim"
    # RUN pip install -r requirements.txt at build time; off where the build has no package index (the
    # pins then travel as requirements.txt and labels, installed by whatever runs the image).
    install_dependencies: bool = True
    source_root: Path = REPOSITORY_ROOT  # where trainer/run/ and generated/ are copied from
    source_url: str = "https://github.com/modelplane/modelplane"
    network_mode: str | None = None  # the build's network ("none", "host"); None: the engine's default
    timeout_seconds: int = 1800  # the Docker API client's timeout for one build
    log_tail_lines: int = 30


@dataclass(frozen=True)
class ImageSpec:
    """Everything an image is made from, derived from a schema: pure data, no engine involved."""

    tag: str
    dockerfile: str
    requirements: tuple[str, ...]
    labels: dict[str, str]


# -- validation and naming ----------------------------------------------------------------------------------------


def plain_requirement(text: str) -> str:
    """``text`` as a normalised requirement (``name[extras]==1.0,<2``) if it is a plain one, else InvalidImageSpec.

    Only names, extras and version specifiers are accepted: a URL (``pkg @ https://...``), a pip option
    (``--index-url``, ``-e``), an environment marker (``; python_version...``) or anything a shell would
    interpret could make the build fetch or run something the schema's author did not name.
    """
    if len(text) > MAX_REQUIREMENT_LENGTH:
        raise InvalidImageSpec(f"dependency {text[:40]!r}... is longer than {MAX_REQUIREMENT_LENGTH} characters")
    match = _REQUIREMENT.fullmatch(text.strip())
    if match is None:
        raise InvalidImageSpec(
            f"dependency {text!r} is not a plain requirement (a package name, optional [extras] and version "
            "specifiers such as 'pandas>=2.2,<3'; URLs, pip options and markers are not accepted)"
        )
    extras = re.sub(r"\s+", "", match["extras"] or "")
    specifiers = re.sub(r"\s+", "", match["specifiers"] or "")
    return f"{match['name']}{extras}{specifiers}"


def _normalised_name(requirement: str) -> str:
    name = re.match(_NAME, requirement)
    return re.sub(r"[-_.]+", "-", name.group(0) if name else requirement).lower()


def _installed_sklearn() -> str:
    return importlib.metadata.version("scikit-learn")


def framework_pin(assembly: training_pb2.ModelAssembly) -> tuple[str, str, str]:
    """(package, version, requirement) for the schema's framework; only scikit-learn is trained here."""
    framework = assembly.model_framework
    if framework.framework_type not in _SKLEARN_TYPES:
        name = training_pb2.ModelFrameworkType.Name(framework.framework_type)
        raise InvalidImageSpec(f"framework {name} has no training image: only scikit-learn models are trained")
    version = framework.framework_version.strip() or _installed_sklearn()
    if not _FRAMEWORK_VERSION.fullmatch(version):
        raise InvalidImageSpec(f"framework_version {version!r} is not a version number such as 1.5.2")
    return "scikit-learn", version, f"scikit-learn=={version}"


# The training run's own imports (besides the framework): arrays, tables, the artifact, the design schema,
# Parquet datasets and s3:// datasets.
RUN_REQUIREMENTS = ("numpy", "pandas", "joblib", "protobuf", "pyarrow", "minio")


def requirements_for(schema: training_pb2.ModelDesignSchema) -> tuple[str, ...]:
    """requirements.txt's lines: the framework pin first, then the schema's dependencies, validated."""
    assembly = schema.model_framework
    package, _, pin = framework_pin(assembly)
    dependencies = assembly.dependencies
    wanted: list[str] = []
    if dependencies.name:
        wanted.append(f"{dependencies.name}=={dependencies.version}" if dependencies.version else dependencies.name)
    wanted += list(dependencies.packages)
    if len(wanted) > MAX_DEPENDENCIES:
        raise InvalidImageSpec(f"{len(wanted)} dependencies: at most {MAX_DEPENDENCIES} are accepted")
    lines = [pin]
    named: set[str] = set()
    for requirement in map(plain_requirement, wanted):
        if _normalised_name(requirement) == package:
            # Two scikit-learn pins would make pip fail late, or silently pick one; say so now.
            raise InvalidImageSpec(f"dependency {requirement!r} conflicts with the framework pin {pin!r}")
        named.add(_normalised_name(requirement))
        if requirement not in lines:
            lines.append(requirement)
    # What trainer/run/run_job.py itself imports, pinned to the versions it is tested with here, unless the
    # schema pins one of them itself.
    for run_package in RUN_REQUIREMENTS:
        if run_package not in named:
            lines.append(f"{run_package}=={importlib.metadata.version(run_package)}")
    return tuple(lines)


def _repository_component(value: str) -> str:
    """``value`` as one lowercase component of an image repository name; changed values get a hash suffix."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:60].strip("-")
    if cleaned == value and cleaned:
        return cleaned
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else digest


def _tag_component(value: str) -> str:
    """``value`` as an image tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``); changed values get a hash suffix."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).lstrip(".-")[:100]
    if cleaned == value and cleaned:
        return cleaned
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else f"v-{digest}"


def image_tag(registry_prefix: str, schema: training_pb2.ModelDesignSchema) -> str:
    token = schema.design_token.value
    if not token.strip():
        raise InvalidImageSpec("the schema has no design_token, so its training image cannot be named")
    version = schema.version.version or "latest"
    return f"{registry_prefix.rstrip('/')}/modelplane-train-{_repository_component(token)}:{_tag_component(version)}"


def _label_literal(value: str) -> str:
    """A Dockerfile LABEL value: double-quoted, with the characters the Dockerfile parser would interpret
    (backslash, quote, ``$`` variable expansion) escaped. Control characters are refused outright."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise InvalidImageSpec(f"label value {value!r} contains control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


# -- the Dockerfile ---------------------------------------------------------------------------------------------


def image_spec(schema: training_pb2.ModelDesignSchema, settings: ImageBuildSettings) -> ImageSpec:
    """Tag, Dockerfile, requirements and labels for ``schema``. Raises InvalidImageSpec for bad input."""
    tag = image_tag(settings.registry_prefix, schema)
    requirements = requirements_for(schema)
    framework, framework_version, _ = framework_pin(schema.model_framework)
    repository = tag.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    design_version = schema.version.version
    labels = {
        "org.opencontainers.image.title": repository,
        "org.opencontainers.image.description": f"modelplane training run for design {schema.design_token.value}",
        "org.opencontainers.image.version": design_version,
        "org.opencontainers.image.source": settings.source_url,
        "org.opencontainers.image.vendor": "modelplane",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": settings.base_image,
        # No org.opencontainers.image.created: a timestamp would change the content hash on every build.
        "io.modelplane.design-token": schema.design_token.value,
        "io.modelplane.design-version": design_version,
        "io.modelplane.framework": framework,
        "io.modelplane.framework-version": framework_version,
    }
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", settings.base_image):
        raise InvalidImageSpec(f"base image {settings.base_image!r} is not an image reference")
    lines = [
        f"FROM {settings.base_image}",
        *(f"LABEL {key}={_label_literal(value)}" for key, value in labels.items()),
        f"ENV PYTHONPATH={IMAGE_HOME} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
        f"WORKDIR {IMAGE_HOME}",
        f"COPY requirements.txt {IMAGE_HOME}/requirements.txt",
    ]
    if settings.install_dependencies:
        # Exec form (a JSON array): no shell ever sees the requirements.
        install = ["python", "-m", "pip", "install", "--no-cache-dir", "-r", f"{IMAGE_HOME}/requirements.txt"]
        lines.append(f"RUN {json.dumps(install)}")
    lines += [f"COPY {path} {IMAGE_HOME}/{path}" for path in SOURCE_PATHS]
    lines.append(f"ENTRYPOINT {json.dumps(['python', '-m', 'trainer.run.run_job'])}")
    return ImageSpec(tag=tag, dockerfile="\n".join(lines) + "\n", requirements=requirements, labels=labels)


def _source_files(root: Path) -> Iterator[tuple[str, bytes]]:
    for source in SOURCE_PATHS:
        top = root / source
        if top.is_file():
            yield source, top.read_bytes()
            continue
        if not top.is_dir():
            raise ImageBuildError(f"{top} does not exist: source_root must hold {', '.join(SOURCE_PATHS)}")
        for path in sorted(top.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                yield path.relative_to(root).as_posix(), path.read_bytes()


def build_context(spec: ImageSpec, settings: ImageBuildSettings) -> tuple[bytes, str]:
    """The build context as a tar archive (deterministic: fixed order, times and owners) and its content hash."""
    files = [
        ("Dockerfile", spec.dockerfile.encode()),
        ("requirements.txt", ("\n".join(spec.requirements) + "\n").encode()),
        *_source_files(settings.source_root),
    ]
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files:
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), digest.hexdigest()


# -- building -------------------------------------------------------------------------------------------------


def _log_tail(log: Any, lines: int) -> str:
    text = "".join(
        str(entry.get("stream") or entry.get("error") or entry.get("status") or "")
        for entry in (log or [])
        if isinstance(entry, dict)
    )
    return "\n".join(text.splitlines()[-lines:])


class ImageBuilder:
    """Builds (or finds) the training image of a schema. ``image_for`` is what KubernetesJobLauncher takes as
    its ``image`` setting; it blocks, so call it in a thread (the launcher does) or use :meth:`ensure`."""

    def __init__(self, settings: ImageBuildSettings | None = None) -> None:
        self.settings = settings or ImageBuildSettings()
        self._lock = threading.Lock()
        self._tag_locks: dict[str, threading.Lock] = {}

    def spec(self, schema: training_pb2.ModelDesignSchema) -> ImageSpec:
        return image_spec(schema, self.settings)

    async def ensure(self, schema: training_pb2.ModelDesignSchema) -> str:
        return await asyncio.to_thread(self.image_for, schema)

    def image_for(self, schema: training_pb2.ModelDesignSchema) -> str:
        """The tag of ``schema``'s training image, built unless an image with that tag and content exists."""
        spec = self.spec(schema)
        context, content_hash = build_context(spec, self.settings)
        with self._lock:
            tag_lock = self._tag_locks.setdefault(spec.tag, threading.Lock())
        with tag_lock:  # two runs of one design at once build its image once
            client: Any = None
            try:
                # The constructor already asks the engine for its API version, so it too can fail.
                client = docker.DockerClient(base_url=self.settings.docker_url, timeout=self.settings.timeout_seconds)
                if self._existing_hash(client, spec.tag) == content_hash:
                    return spec.tag
                self._build(client, spec, context, content_hash)
            except docker.errors.BuildError as error:
                tail = _log_tail(error.build_log, self.settings.log_tail_lines)
                raise ImageBuildError(f"building {spec.tag} failed: {error.msg}\n{tail}") from error
            except docker.errors.DockerException as error:
                raise ImageBuildError(f"building {spec.tag} failed: {error}") from error
            finally:
                if client is not None:
                    client.close()
        return spec.tag

    @staticmethod
    def _existing_hash(client: Any, tag: str) -> str | None:
        try:
            image = client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None
        labels = image.labels or {}
        return str(labels.get(CONTENT_HASH_LABEL, "")) or None

    def _build(self, client: Any, spec: ImageSpec, context: bytes, content_hash: str) -> None:
        options: dict[str, Any] = {
            "fileobj": io.BytesIO(context),
            "custom_context": True,
            "tag": spec.tag,
            "labels": {CONTENT_HASH_LABEL: content_hash},
            "rm": True,
            "forcerm": True,
            "pull": False,
        }
        if self.settings.network_mode is not None:
            options["network_mode"] = self.settings.network_mode
        client.images.build(**options)
