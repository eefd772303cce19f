"""The batch/v1 Job a training run becomes (pure: no API calls); kubernetes_job.py creates and follows it.

The job directory lives on a shared *work* volume: the trainer sees it at ``work_local_root``, the Job's pod
at ``work_mount_path`` (the same PVC, ``work_claim``), so job.json, design_schema.pb, result.json and output/
pass between them as files, exactly as for a local run. The dataset PVC (``dataset_claim``) is mounted
read-only at ``dataset_mount_path``: the seed's ``datasetPath`` ("will be already mounted", step 3).

The Job:

- runs ``python -m trainer.run.run_job <pod job dir>`` in the training image (a fixed name, or a callable that
  gives the image for a schema: ``trainer.launchers.image_build.ImageBuilder.image_for``);
- requests and limits what the schema's ``ModelCompute`` names (cores, RAM GiB, GPUs by vendor);
- ``restartPolicy: Never`` with a ``podFailurePolicy`` that fails the Job at once on exit codes 1-127 (the run's
  "bad input / bug": retrying cannot help) except EXIT_UNAVAILABLE (its dataset's store was unreachable), and
  lets ``backoffLimit`` retry the rest (that one, signals, OOM kills);
  evictions and preemptions (``DisruptionTarget``) are ignored, not counted against the limit;
- carries labels ``app.kubernetes.io/managed-by=modelplane``, ``modelplane.io/run-id`` and
  ``modelplane.io/design-token`` (sanitised to label syntax).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes.aio.client import models as m

from generated.mlops.training.v1 import training_pb2
from modelplane.kubernetes_api import KubernetesConnection
from trainer.run.jobs import EXIT_UNAVAILABLE

CONTAINER_NAME = "train"
MANAGED_BY = "modelplane"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN_ID = "modelplane.io/run-id"
LABEL_DESIGN_TOKEN = "modelplane.io/design-token"  # noqa: S105 - a label key, not a secret
# The run's "bad input / internal error" codes (trainer/run/jobs.py): 1-127 but the retryable EXIT_UNAVAILABLE.
PERMANENT_EXIT_CODES = [code for code in range(1, 128) if code != EXIT_UNAVAILABLE]
_MAX_NAME = 63  # a Job's name becomes a pod label value (job-name), so it must fit one

ImageSource = str | Callable[[training_pb2.ModelDesignSchema], str]


@dataclass(frozen=True)
class KubernetesJobSettings:
    """Everything a training Job is built from besides the schema. Each field is a documented trainer knob."""

    image: ImageSource  # the training image, or a callable giving it for a schema (it may build the image)
    work_claim: str  # the PVC holding job directories, shared by the trainer and the Job's pod
    work_local_root: Path  # where the trainer itself has that volume mounted
    work_mount_path: str = "/modelplane/jobs"  # where the pod mounts it
    namespace: str = "default"
    service_account: str | None = None
    dataset_claim: str | None = None  # the dataset PVC; None: the run reads its dataset by URL
    dataset_mount_path: str = "/datasets"  # the seed's datasetPath: where that PVC is mounted (read-only)
    backoff_limit: int = 2  # retries of retryable failures (exit 128+, OOM kills)
    active_deadline_seconds: int | None = None  # None: the job's own timeout_seconds from job.json
    ttl_seconds_after_finished: int | None = 3600  # how long the finished Job (and its pods' logs) stay
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for the run
    env_from_secret: str | None = None  # a Secret whose keys become environment (S3 credentials)
    image_pull_policy: str = "IfNotPresent"
    command: tuple[str, ...] = ("python", "-m", "trainer.run.run_job")  # the pod job dir is appended
    job_name_prefix: str = "modelplane-train"
    watch_timeout_seconds: int = 240  # server-side watch timeout; the launcher reconnects after it
    api_retries: int = 5  # consecutive failed API calls while following a Job before giving up on it
    connection: KubernetesConnection = field(default_factory=KubernetesConnection)


# -- names and labels -------------------------------------------------------------------------------------------


def _short_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def label_value(value: str) -> str:
    """``value`` as a valid label value: at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends. A value
    that had to change gets a hash suffix, so two different tokens never collapse into one label."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    if cleaned == value and len(cleaned) <= _MAX_NAME:
        return cleaned
    return f"{cleaned[: _MAX_NAME - 9].rstrip('-_.')}-{_short_hash(value)}".lstrip("-")


def job_name(prefix: str, run_id: str) -> str:
    """A DNS-1123 label (lowercase alphanumerics and '-', at most 63) naming the Job of ``run_id``."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    name = f"{prefix}-{cleaned}"
    if cleaned == run_id and len(name) <= _MAX_NAME:
        return name
    return f"{name[: _MAX_NAME - 9].rstrip('-')}-{_short_hash(run_id)}"


# -- the Job object ------------------------------------------------------------------------------------------------


def resources_for(schema: training_pb2.ModelDesignSchema) -> m.V1ResourceRequirements | None:
    """Requests = limits from ``ModelAssembly.compute_dependencies``; None when the schema names nothing (the
    namespace's LimitRange defaults apply). Raises ValueError for negative quantities (bad input)."""
    compute = schema.model_framework.compute_dependencies
    quantities: dict[str, str] = {}
    match compute.WhichOneof("compute_type"):
        case "cpu":
            if compute.cpu.no_of_cores < 0 or compute.cpu.ram < 0 or not math.isfinite(compute.cpu.ram):
                raise ValueError(
                    f"compute: no_of_cores {compute.cpu.no_of_cores} and ram {compute.cpu.ram} GiB must be >= 0"
                )
            if compute.cpu.no_of_cores:
                quantities["cpu"] = str(compute.cpu.no_of_cores)
            if compute.cpu.ram:
                quantities["memory"] = f"{math.ceil(compute.cpu.ram * 1024)}Mi"
        case "gpu":
            if compute.gpu.count < 0:
                raise ValueError(f"compute: gpu count {compute.gpu.count} must be >= 0")
            vendor = "amd.com/gpu" if compute.gpu.gpu_type == training_pb2.GPU_TYPE_AMD else "nvidia.com/gpu"
            quantities[vendor] = str(max(1, compute.gpu.count))  # a GPU compute with no count still means one
    if not quantities:
        return None
    return m.V1ResourceRequirements(requests=dict(quantities), limits=dict(quantities))


def build_job(
    settings: KubernetesJobSettings,
    schema: training_pb2.ModelDesignSchema,
    *,
    name: str,
    run_id: str,
    pod_job_dir: str,
    image: str,
    deadline_seconds: int,
) -> m.V1Job:
    """The batch/v1 Job for one run (pure: no API calls), as the module docstring describes."""
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN_ID: label_value(run_id),
        LABEL_DESIGN_TOKEN: label_value(schema.design_token.value),
    }
    env = [m.V1EnvVar(name="MODELPLANE_RUN_ID", value=run_id)]
    if settings.dataset_claim:
        env.append(m.V1EnvVar(name="MODELPLANE_DATASET_ROOT", value=settings.dataset_mount_path))
    env += [m.V1EnvVar(name=key, value=value) for key, value in sorted(settings.env.items())]
    mounts = [m.V1VolumeMount(name="work", mount_path=settings.work_mount_path)]
    volumes = [
        m.V1Volume(
            name="work", persistent_volume_claim=m.V1PersistentVolumeClaimVolumeSource(claim_name=settings.work_claim)
        )
    ]
    if settings.dataset_claim:
        mounts.append(m.V1VolumeMount(name="dataset", mount_path=settings.dataset_mount_path, read_only=True))
        volumes.append(
            m.V1Volume(
                name="dataset",
                persistent_volume_claim=m.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.dataset_claim, read_only=True
                ),
            )
        )
    container = m.V1Container(
        name=CONTAINER_NAME,
        image=image,
        image_pull_policy=settings.image_pull_policy,
        command=[*settings.command, pod_job_dir],
        env=env,
        env_from=[m.V1EnvFromSource(secret_ref=m.V1SecretEnvSource(name=settings.env_from_secret))]
        if settings.env_from_secret
        else None,
        resources=resources_for(schema),
        volume_mounts=mounts,
        # On failure the kubelet puts the log's tail into the terminated state's message: the outcome's detail.
        termination_message_policy="FallbackToLogsOnError",
    )
    failure_policy = m.V1PodFailurePolicy(
        rules=[
            m.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=m.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=CONTAINER_NAME, operator="In", values=PERMANENT_EXIT_CODES
                ),
            ),
            m.V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[m.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")],
            ),
        ]
    )
    return m.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=m.V1ObjectMeta(name=name, namespace=settings.namespace, labels=labels),
        spec=m.V1JobSpec(
            backoff_limit=settings.backoff_limit,
            active_deadline_seconds=deadline_seconds,
            ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
            pod_failure_policy=failure_policy,
            template=m.V1PodTemplateSpec(
                metadata=m.V1ObjectMeta(labels=dict(labels)),
                spec=m.V1PodSpec(
                    restart_policy="Never",  # required by podFailurePolicy; retries are new pods, counted by the Job
                    service_account_name=settings.service_account,
                    containers=[container],
                    volumes=volumes,
                ),
            ),
        ),
    )
