"""Reading and checking the Scheduler API's ``Model`` message: validation, versions and resource needs."""

from __future__ import annotations

import enum

from generated.mlops.scheduler import scheduler_pb2 as pb
from scheduler.errors import InvalidArgument
from scheduler.model_names import check_name

MAX_REPLICAS = 1000
MAX_REQUIREMENTS = 64
MAX_PARAMETERS = 256
MAX_TEXT = 4096
# Larger than any single machine's memory today; a bigger figure is a mistake, and it keeps sums in range.
MAX_MEMORY_BYTES = 1 << 50
MAX_INSTANCES = 1024


class SpecChange(enum.Enum):
    """How a LoadModel request relates to the model's latest version."""

    UNCHANGED = "unchanged"
    NEW_VERSION = "new version"  # modelSpec changed
    DEPLOYMENT = "deployment"  # only deploymentSpec (replicas, min/max) changed: update in place
    METADATA = "metadata"  # only metadata or stream settings changed: patch in place


def validate_model(model: pb.Model) -> None:
    """Raise InvalidArgument naming the first problem with ``model``; return if it can be loaded."""
    if not model.HasField("meta"):
        raise InvalidArgument("model.meta is missing: it carries the model's name")
    check_name(model.meta.name)
    if not model.HasField("modelSpec"):
        raise InvalidArgument(f"model {model.meta.name!r}: modelSpec is missing (it says where the artifact is)")
    spec = model.modelSpec
    if not spec.uri:
        raise InvalidArgument(f"model {model.meta.name!r}: modelSpec.uri is empty")
    if len(spec.uri) > MAX_TEXT:
        raise InvalidArgument(f"model {model.meta.name!r}: modelSpec.uri is longer than {MAX_TEXT} characters")
    if len(spec.requirements) > MAX_REQUIREMENTS:
        raise InvalidArgument(f"model {model.meta.name!r}: more than {MAX_REQUIREMENTS} requirements")
    for requirement in spec.requirements:
        if not requirement or len(requirement) > 253 or requirement != requirement.strip():
            raise InvalidArgument(f"model {model.meta.name!r}: requirement {requirement!r} is not a capability name")
    if len(spec.parameters) > MAX_PARAMETERS:
        raise InvalidArgument(f"model {model.meta.name!r}: more than {MAX_PARAMETERS} parameters")
    if spec.HasField("memoryBytes") and spec.memoryBytes > MAX_MEMORY_BYTES:
        raise InvalidArgument(f"model {model.meta.name!r}: memoryBytes {spec.memoryBytes} is more than 1 PiB")
    if spec.HasField("server"):
        check_name(spec.server, "server")
    if instance_count(model) > MAX_INSTANCES:
        raise InvalidArgument(f"model {model.meta.name!r}: more than {MAX_INSTANCES} instances in modelRuntimeInfo")
    _validate_deployment(model)
    if model.meta.HasField("kubernetesMeta") and model.meta.kubernetesMeta.generation < 0:
        raise InvalidArgument(f"model {model.meta.name!r}: kubernetesMeta.generation is negative")


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


def desired_replicas(model: pb.Model) -> int:
    """Replicas wanted. A request without a deploymentSpec wants one, like Seldon's Model resource default."""
    return model.deploymentSpec.replicas if model.HasField("deploymentSpec") else 1


def min_replicas(model: pb.Model) -> int:
    return model.deploymentSpec.minReplicas


def instance_count(model: pb.Model) -> int:
    """How many copies of the model one replica runs (each needs the model's memory)."""
    info = model.modelSpec.modelRuntimeInfo
    kind = info.WhichOneof("modelRuntimeInfo")
    if kind == "mlserver":
        return max(1, info.mlserver.parallelWorkers)
    if kind == "triton":
        return max(1, sum(cpu.instanceCount for cpu in info.triton.cpu))
    return 1


def memory_needed(model: pb.Model) -> int:
    """Bytes one replica commits to the model: memoryBytes x instance count (0 when unspecified)."""
    return model.modelSpec.memoryBytes * instance_count(model)


def is_explainer(model: pb.Model) -> bool:
    return model.modelSpec.WhichOneof("model_spec") == "explainer"


def requirements(model: pb.Model) -> frozenset[str]:
    """Capabilities the server must have (explainers' extra need is checked per replica by placement)."""
    return frozenset(model.modelSpec.requirements)


def classify_change(latest: pb.Model, requested: pb.Model) -> SpecChange:
    if latest.modelSpec != requested.modelSpec:
        return SpecChange.NEW_VERSION
    if latest.deploymentSpec != requested.deploymentSpec:
        return SpecChange.DEPLOYMENT
    if latest != requested:
        return SpecChange.METADATA
    return SpecChange.UNCHANGED


def first_version(model: pb.Model) -> int:
    """A new model's first version: its Kubernetes generation when it has one, else 1."""
    generation = model.meta.kubernetesMeta.generation if model.meta.HasField("kubernetesMeta") else 0
    return max(1, min(generation, 2**32 - 1))
