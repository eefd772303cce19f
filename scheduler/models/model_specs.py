"""Reading and checking the Scheduler API's ``Model`` message: validation, versions and resource needs."""

from __future__ import annotations

import enum
import logging
import math

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane import storage_secrets
from modelplane.spec.errors import FailedPrecondition, InvalidArgument
from modelplane.spec.limits import (
    MAX_INSTANCES,
    MAX_MEMORY_BYTES,
    MAX_MODEL_SPEC_BYTES,
    MAX_MODEL_VERSIONS,
    MAX_REPLICAS,
    MAX_VERSION,
    check_fields,
    shown,
)
from modelplane.spec.model_resources import instance_count
from modelplane.spec.names import check_kubernetes_meta, check_name
from scheduler.models.model_records import ModelRecord, ModelVersion

log = logging.getLogger(__name__)


class SpecChange(enum.Enum):
    """How a LoadModel request relates to the model's latest version."""

    UNCHANGED = "unchanged"
    NEW_VERSION = "new version"  # modelSpec changed
    DEPLOYMENT = "deployment"  # only deploymentSpec (replicas, min/max) changed: update in place
    METADATA = "metadata"  # only metadata or stream settings changed: patch in place
    # Nothing changed but an inline storage config withheld since a restart is given again: patch in place.
    CREDENTIALS = "credentials"


def validate_model(model: pb.Model) -> None:
    """Raise InvalidArgument naming the first problem with ``model``; return if it can be loaded.

    Field lengths, characters and counts are modelplane/spec/limits.py's; what makes a model loadable is here.
    """
    validate_spec(model)
    if storage_secrets.has_inline_config(model) and storage_secrets.is_redacted(
        model.modelSpec.storageConfig.storageRcloneConfig
    ):
        # A spec copied from a status answer: the marker is not a config (only stored versions may hold it).
        raise InvalidArgument(
            f"model {model.meta.name!r}: modelSpec.storageConfig.storageRcloneConfig is the redaction marker a "
            "status shows, not a config: send the rclone config itself, or name a storageSecretName"
        )
    generation = model.meta.kubernetesMeta.generation
    if generation > MAX_VERSION:
        raise InvalidArgument(
            f"model {model.meta.name!r}: kubernetesMeta.generation {generation} is above {MAX_VERSION}: "
            "it becomes the model's first version, and versions are uint32"
        )


def validate_spec(model: pb.Model) -> None:
    """``validate_model`` but for the generation, which matters only when it makes a model's first version: what
    every stored version's spec must pass too."""
    if not model.HasField("meta"):
        raise InvalidArgument("model.meta is missing: it carries the model's name")
    check_name(model.meta.name)
    name = model.meta.name
    check_fields(model, f"model {name!r}")
    if not model.HasField("modelSpec"):
        raise InvalidArgument(f"model {name!r}: modelSpec is missing (it says where the artifact is)")
    spec = model.modelSpec
    if not spec.uri:
        raise InvalidArgument(f"model {name!r}: modelSpec.uri is empty")
    for requirement in spec.requirements:
        if not requirement or requirement != requirement.strip():
            raise InvalidArgument(f"model {name!r}: requirement {shown(requirement)} is not a capability name")
    for parameter in spec.parameters:
        if not parameter.name or parameter.name != parameter.name.strip():
            raise InvalidArgument(
                f"model {name!r}: parameter name {shown(parameter.name)} is empty or has surrounding spaces"
            )
    if spec.HasField("memoryBytes") and spec.memoryBytes > MAX_MEMORY_BYTES:
        raise InvalidArgument(f"model {name!r}: memoryBytes {spec.memoryBytes} is more than 1 PiB")
    if spec.HasField("server"):
        check_name(spec.server, "server")
    if instance_count(model) > MAX_INSTANCES:
        raise InvalidArgument(f"model {name!r}: more than {MAX_INSTANCES} instances in modelRuntimeInfo")
    _validate_deployment(model)
    if model.meta.HasField("kubernetesMeta"):
        check_kubernetes_meta(model.meta.kubernetesMeta, f"model {name!r}: meta")
    size = model.ByteSize()
    if size > MAX_MODEL_SPEC_BYTES:
        raise InvalidArgument(
            f"model {name!r} is {size} bytes serialized; the limit is {MAX_MODEL_SPEC_BYTES} bytes "
            "(parameters are the usual culprit), so that the status of every version kept fits a client's 4 MB"
        )


def _validate_deployment(model: pb.Model) -> None:
    name = model.meta.name
    deployment = model.deploymentSpec
    for field in ("replicas", "minReplicas", "maxReplicas"):
        value = getattr(deployment, field)
        if value > MAX_REPLICAS:
            raise InvalidArgument(
                f"model {name!r}: deploymentSpec.{field}={value} is above the limit of {MAX_REPLICAS}"
            )
    if deployment.maxReplicas and deployment.minReplicas > deployment.maxReplicas:
        raise InvalidArgument(
            f"model {name!r}: minReplicas={deployment.minReplicas} is more than maxReplicas={deployment.maxReplicas}"
        )
    if deployment.maxReplicas and deployment.replicas > deployment.maxReplicas:
        raise InvalidArgument(
            f"model {name!r}: replicas={deployment.replicas} is more than maxReplicas={deployment.maxReplicas}"
        )
    if deployment.replicas and deployment.minReplicas > deployment.replicas:
        raise InvalidArgument(
            f"model {name!r}: minReplicas={deployment.minReplicas} is more than replicas={deployment.replicas}"
        )


def classify_change(latest: pb.Model, requested: pb.Model) -> SpecChange:
    restored = _credentials_restored(latest, requested)
    if restored:
        # The stored version lost its inline config on a restart (models/model_records.py): the scheduler cannot
        # tell the one given now from the one it had, so the request's is taken as the same, in place.
        latest = storage_secrets.with_config_of(latest, requested)
    if latest.modelSpec != requested.modelSpec:
        return SpecChange.NEW_VERSION
    if latest.deploymentSpec != requested.deploymentSpec:
        return SpecChange.DEPLOYMENT
    if latest != requested:
        return SpecChange.METADATA
    return SpecChange.CREDENTIALS if restored else SpecChange.UNCHANGED


def _credentials_restored(latest: pb.Model, requested: pb.Model) -> bool:
    """True if ``latest`` holds the marker where its inline config was and ``requested`` gives a real one."""
    if not (storage_secrets.has_inline_config(latest) and storage_secrets.has_inline_config(requested)):
        return False
    config = requested.modelSpec.storageConfig.storageRcloneConfig
    return storage_secrets.is_redacted(latest.modelSpec.storageConfig.storageRcloneConfig) and not (
        storage_secrets.is_redacted(config)
    )


def first_version(model: pb.Model) -> int:
    """A new model's first version: its Kubernetes generation when it has one, else 1.

    ``validate_model`` refuses a generation above MAX_VERSION, so the version always fits the wire's uint32.
    """
    generation = model.meta.kubernetesMeta.generation if model.meta.HasField("kubernetesMeta") else 0
    return max(1, generation)


def next_version(name: str, latest: int) -> int:
    """The version after ``latest``. Raises FailedPrecondition past the last number a uint32 holds: the client
    must not retry (Seldon's clients read FAILED_PRECONDITION so) but unload the model and load it again."""
    if latest >= MAX_VERSION:
        raise FailedPrecondition(
            f"model {name!r} is at version {latest}, the largest a version can be ({MAX_VERSION}, a uint32): "
            "a changed modelSpec cannot make a new version; unload the model and load it again to restart its "
            "versions (a deploymentSpec-only change still applies in place)"
        )
    return latest + 1


def usable_record(stored: ModelRecord, *, checked: bool = False) -> ModelRecord | None:
    """``stored`` (read back from the state store) with only the versions a request could have made: a version
    number in range, above the one before, and a spec that passes ``validate_model`` for this very model; at most
    the newest MAX_MODEL_VERSIONS. None when no version is left. Every version left out is logged.

    ``checked``: the specs carry the mark of having passed ``validate_spec`` under today's rules when they were
    written (models/model_records.py, "Checked once"), so it is not run again; every other check is."""
    try:
        check_name(stored.name)
    except InvalidArgument as error:
        log.error("cannot use stored model record %s: %s; skipping it (kept in the store)", shown(stored.name), error)
        return None
    kept: list[ModelVersion] = []
    for version in stored.versions:
        problem = _stored_version_problem(stored.name, version, checked=checked)
        if problem is None and kept and version.version <= kept[-1].version:
            problem = f"its number is not above the version before it ({kept[-1].version})"
        if problem is not None:
            log.error(
                "cannot use version %d of stored model %r (%s); leaving it out (it stays in the store)",
                version.version,
                stored.name,
                problem,
            )
            continue
        kept.append(version)
    for version in kept[:-MAX_MODEL_VERSIONS]:
        log.error("stored model %r keeps too many versions: leaving out version %d", stored.name, version.version)
    kept = kept[-MAX_MODEL_VERSIONS:]
    if not kept:
        log.error("stored model %r has no usable version; skipping it (kept in the store)", stored.name)
        return None
    return ModelRecord(stored.name, kept, deleted=stored.deleted)


def _stored_version_problem(name: str, version: ModelVersion, *, checked: bool) -> str | None:
    if not 1 <= version.version <= MAX_VERSION:
        return f"version {version.version} is outside 1..{MAX_VERSION}"
    if not math.isfinite(version.created_at):
        return f"its creation time {version.created_at} is not a number"
    if version.name != name:  # the spec's meta.name, read when the version was made
        return f"its spec is of model {shown(version.name)}"
    if checked:
        return None
    try:
        validate_spec(version.spec)
    except InvalidArgument as error:
        return str(error)
    return None


def event_problem(event: agent_pb2.ModelEvent) -> str | None:
    """Why an agent's event cannot be applied as it is (a malformed name or version), or None."""
    try:
        check_fields(event, "event")
        check_name(event.model_name)
    except InvalidArgument as error:
        return str(error)
    if not 1 <= event.model_version <= MAX_VERSION:
        return f"event for {event.model_name}: version {event.model_version} is not a model version"
    return None
