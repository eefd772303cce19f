"""Run a training job as a Kubernetes batch/v1 Job (seeds/000 step 4, "Create Kubernetes Job").

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

The launcher creates the Job, then follows it with list+watch by name (resuming from the last
``resourceVersion``, re-listing after ``410 Gone``, reconnecting when a stream ends) until it is ``Complete``
or ``Failed``. A failed Job's verdict comes from its pods' terminated exit codes (1-127 but EXIT_UNAVAILABLE
permanent, otherwise retryable) and says which. Cancelling ``run()`` deletes the Job with
``propagationPolicy: Background``.
API errors become outcomes with a detail a person can act on (401/403 name the RBAC the service account
needs), never an exception out of ``run()``.

It uses the official client's asyncio flavour (``kubernetes.aio``, shipped in the ``kubernetes`` package
since 35.x), so a watch never ties up a thread and cancellation reaches the HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio.client import models as m
from kubernetes.aio.client.exceptions import ApiException

from generated.mlops.training.v1 import training_pb2
from modelplane.logs import with_fields
from trainer.launchers.base import LaunchOutcome, LaunchVerdict, verdict_for_exit_code
from trainer.run.jobs import EXIT_UNAVAILABLE, RESULT_FILE, TrainingJob

logger = logging.getLogger(__name__)

CONTAINER_NAME = "train"
MANAGED_BY = "modelplane"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN_ID = "modelplane.io/run-id"
LABEL_DESIGN_TOKEN = "modelplane.io/design-token"  # noqa: S105 - a label key, not a secret
# The run's "bad input / internal error" codes (trainer/run/jobs.py): 1-127 but the retryable EXIT_UNAVAILABLE.
PERMANENT_EXIT_CODES = [code for code in range(1, 128) if code != EXIT_UNAVAILABLE]
_FALLBACK_DEADLINE_SECONDS = 3600  # TrainingJob's own default timeout
_MIN_WATCH_SECONDS = 0.5  # a watch that ended sooner is reopened only after this pause
_MAX_NAME = 63  # a Job's name becomes a pod label value (job-name), so it must fit one

ImageSource = str | Callable[[training_pb2.ModelDesignSchema], str]


@dataclass(frozen=True)
class KubernetesConnection:
    """Where the API server is. Precedence: ``host`` (an explicit URL), then in-cluster, then kubeconfig."""

    host: str | None = None  # e.g. https://kubernetes.default.svc, or the tests' fake at http://127.0.0.1:PORT
    token: str | None = None  # bearer token sent to ``host``
    ca_cert: str | None = None  # CA bundle file for ``host``
    verify_ssl: bool = True
    in_cluster: bool = False  # the pod's service-account token and the KUBERNETES_SERVICE_* environment
    kubeconfig: str | None = None  # None: $KUBECONFIG or ~/.kube/config
    context: str | None = None


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


# -- following a Job --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Condition:
    type: str
    reason: str
    message: str


def _terminal(conditions: list[tuple[Any, Any, Any, Any]]) -> _Condition | None:
    """The Job's terminal condition (Complete or Failed, status True), if it has one. FailureTarget is not
    terminal: the controller is still terminating pods, and Failed follows."""
    for kind, status, reason, message in conditions:
        if kind in ("Complete", "Failed") and status == "True":
            return _Condition(str(kind), str(reason or ""), str(message or ""))
    return None


def _conditions_of_raw(job: Mapping[str, Any]) -> list[tuple[Any, Any, Any, Any]]:
    raw = (job.get("status") or {}).get("conditions") or []
    return [(c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in raw]


def _conditions_of(job: m.V1Job) -> list[tuple[Any, Any, Any, Any]]:
    raw = (job.status.conditions if job.status else None) or []
    return [(c.type, c.status, c.reason, c.message) for c in raw]


class _GiveUpError(Exception):
    """Following the Job cannot go on; the message is the outcome's detail."""


def _describe_api_error(error: ApiException, action: str) -> str:
    message = str(error.reason or "")
    with contextlib.suppress(ValueError, TypeError):
        message = json.loads(error.body or "").get("message") or message
    text = f"{action}: HTTP {error.status} {message}".rstrip()
    if error.status in (401, 403):
        text += (
            " (the trainer's Kubernetes credentials were refused: its service account needs batch/jobs "
            "create, get, list, watch, delete and pods list in this namespace)"
        )
    return text


class KubernetesJobLauncher:
    """Runs a training job as a Kubernetes Job (see the module docstring)."""

    def __init__(self, settings: KubernetesJobSettings) -> None:
        self.settings = settings

    # -- the Launcher protocol --

    async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
        settings = self.settings
        try:
            pod_job_dir = self.pod_path(job_dir)
        except ValueError as error:
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, f"configuration: {error}")
        job = _read_job(job_dir)
        run_id = job.run_id if job else job_dir.name
        # activeDeadlineSeconds must be a positive integer: round a fractional timeout up, never down to 0.
        deadline = settings.active_deadline_seconds or max(
            1, math.ceil(job.timeout_seconds) if job else _FALLBACK_DEADLINE_SECONDS
        )
        try:
            image = (
                settings.image if isinstance(settings.image, str) else await asyncio.to_thread(settings.image, schema)
            )
        except ValueError as error:  # the schema asks for something no image can hold (a bad dependency)
            return LaunchOutcome(LaunchVerdict.FAILED_PERMANENTLY, None, f"no training image for this schema: {error}")
        except Exception as error:  # a build that failed for reasons outside the schema
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, f"the training image was not built: {error}")
        name = job_name(settings.job_name_prefix, run_id)
        try:
            body = build_job(
                settings,
                schema,
                name=name,
                run_id=run_id,
                pod_job_dir=pod_job_dir,
                image=image,
                deadline_seconds=deadline,
            )
        except ValueError as error:
            return LaunchOutcome(LaunchVerdict.FAILED_PERMANENTLY, None, str(error))
        try:
            async with self._api() as api:
                return await self._create_and_follow(api, body, name, run_id, job_dir)
        except k8s_config.ConfigException as error:
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, f"no Kubernetes configuration: {error}")

    def pod_path(self, job_dir: Path) -> str:
        """Where the pod sees ``job_dir``: the same place under the work volume's mount path."""
        root = self.settings.work_local_root.resolve()
        try:
            relative = job_dir.resolve().relative_to(root)
        except ValueError:
            raise ValueError(
                f"job directory {job_dir} is not on the work volume ({root}), so a Job's pod could not see it"
            ) from None
        return str(PurePosixPath(self.settings.work_mount_path) / PurePosixPath(*relative.parts))

    # -- internals --

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[k8s.ApiClient]:
        connection = self.settings.connection
        configuration = k8s.Configuration()
        if connection.host:
            configuration.host = connection.host
            configuration.verify_ssl = connection.verify_ssl
            configuration.ssl_ca_cert = connection.ca_cert
            if connection.token:
                configuration.api_key = {"BearerToken": connection.token}
                configuration.api_key_prefix = {"BearerToken": "Bearer"}
        elif connection.in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=connection.kubeconfig, context=connection.context, client_configuration=configuration
            )
        api = k8s.ApiClient(configuration)
        try:
            yield api
        finally:
            await api.close()  # type: ignore[no-untyped-call]

    async def _create_and_follow(
        self, api: k8s.ApiClient, body: m.V1Job, name: str, run_id: str, job_dir: Path
    ) -> LaunchOutcome:
        batch = k8s.BatchV1Api(api)
        namespace = self.settings.namespace
        # Whether the Job is this run's to delete on cancellation: from the moment the create is sent (it may
        # reach the server even if we never see the answer), but not a same-named Job of someone else's.
        ours = False
        try:
            resource_version: str | None = None
            try:
                ours = True
                created = await batch.create_namespaced_job(namespace, body)
                resource_version = created.metadata.resource_version if created.metadata else None
                logger.info("training Job created", extra=with_fields(job=name, namespace=namespace, run_id=run_id))
            except ApiException as error:
                ours = False
                if error.status != 409:
                    action = f"creating Job {namespace}/{name}"
                    return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, _describe_api_error(error, action))
                refused = await self._adopt(batch, name, run_id)
                if refused is not None:
                    return refused
                ours = True  # this run's own Job, created by an earlier launch: follow it from a fresh list
            return await self._follow(api, name, resource_version, job_dir)
        except _GiveUpError as error:
            await self._delete(batch, name)  # an unfollowed Job would run on, unaccounted for
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, f"{error}; Job {namespace}/{name} deleted")
        except (aiohttp.ClientError, TimeoutError) as error:
            return LaunchOutcome(
                LaunchVerdict.FAILED_RETRYABLE, None, f"Job {namespace}/{name}: API server unreachable: {error!r}"
            )
        except asyncio.CancelledError:
            if ours:
                await asyncio.shield(self._delete(batch, name))
            raise

    async def _adopt(self, batch: k8s.BatchV1Api, name: str, run_id: str) -> LaunchOutcome | None:
        """A Job of that name exists: a trainer restarted mid-run launches the same run again. Follow it when
        it is this run's (None); anything else is a clear outcome."""
        namespace = self.settings.namespace
        try:
            existing = await batch.read_namespaced_job(name, namespace)
        except ApiException as error:
            return LaunchOutcome(
                LaunchVerdict.FAILED_RETRYABLE,
                None,
                _describe_api_error(error, f"reading existing Job {namespace}/{name}"),
            )
        labels = (existing.metadata.labels if existing.metadata else None) or {}
        if labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_RUN_ID) == label_value(run_id):
            logger.info("following the existing training Job of this run", extra=with_fields(job=name, run_id=run_id))
            return None
        return LaunchOutcome(
            LaunchVerdict.FAILED_RETRYABLE,
            None,
            f"creating Job {namespace}/{name}: HTTP 409 a Job of that name exists and is not run {run_id}'s",
        )

    async def _follow(
        self, api: k8s.ApiClient, name: str, resource_version: str | None, job_dir: Path
    ) -> LaunchOutcome:
        """List+watch the Job until it is Complete or Failed."""
        batch = k8s.BatchV1Api(api)
        namespace = self.settings.namespace
        selector = f"metadata.name={name}"
        failures = 0
        while True:
            try:
                if resource_version is None:
                    listed = await batch.list_namespaced_job(namespace, field_selector=selector)
                    if not listed.items:
                        raise _GiveUpError(
                            f"Job {namespace}/{name} disappeared before it finished (deleted by someone?)"
                        )
                    resource_version = listed.metadata.resource_version if listed.metadata else None
                    finished = _terminal(_conditions_of(listed.items[0]))
                    if finished:
                        return await self._outcome(api, name, finished, job_dir)
                opened = asyncio.get_running_loop().time()
                resource_version, finished = await self._watch_once(batch, name, resource_version)
                if finished:
                    return await self._outcome(api, name, finished, job_dir)
                failures = 0  # the stream ended normally (server timeout, restart): resume from the last version
                if asyncio.get_running_loop().time() - opened < _MIN_WATCH_SECONDS:
                    # Streams that end at once (a proxy, an overloaded server) must not become a request storm.
                    await asyncio.sleep(_MIN_WATCH_SECONDS)
            except ApiException as error:
                if error.status in (401, 403, 404) or failures >= self.settings.api_retries:
                    raise _GiveUpError(_describe_api_error(error, f"following Job {namespace}/{name}")) from error
                failures += 1
                await asyncio.sleep(min(0.2 * 2**failures, 10.0))
            except (aiohttp.ClientError, TimeoutError) as error:
                if failures >= self.settings.api_retries:
                    raise _GiveUpError(
                        f"following Job {namespace}/{name}: API server unreachable: {error!r}"
                    ) from error
                failures += 1
                await asyncio.sleep(min(0.2 * 2**failures, 10.0))

    async def _watch_once(
        self, batch: k8s.BatchV1Api, name: str, resource_version: str | None
    ) -> tuple[str | None, _Condition | None]:
        """One watch request from ``resource_version``. Returns the last version seen (None: it expired, so
        re-list) and the terminal condition if the Job reached one."""
        namespace = self.settings.namespace
        timeout = self.settings.watch_timeout_seconds
        response = await batch.list_namespaced_job_without_preload_content(
            namespace,
            field_selector=f"metadata.name={name}",
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=float(timeout + 30),  # the client's own timeout must outlast the server's
        )
        try:
            if response.status == 410:
                return None, None
            if response.status != 200:
                raise ApiException(status=response.status, reason=response.reason, body=await response.text())
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:  # our version was compacted away: re-list, then watch again
                        return None, None
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"), body=json.dumps(obj))
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                if kind == "DELETED":
                    raise _GiveUpError(f"Job {namespace}/{name} was deleted before it finished")
                if kind in ("ADDED", "MODIFIED") and (finished := _terminal(_conditions_of_raw(obj))):
                    return resource_version, finished
            return resource_version, None
        finally:
            response.release()

    async def _outcome(self, api: k8s.ApiClient, name: str, finished: _Condition, job_dir: Path) -> LaunchOutcome:
        namespace = self.settings.namespace
        if finished.type == "Complete":
            if not (job_dir / RESULT_FILE).is_file():
                return LaunchOutcome(
                    LaunchVerdict.FAILED_PERMANENTLY,
                    0,
                    f"Job {namespace}/{name} completed but {job_dir} holds no {RESULT_FILE} (is the work volume "
                    f"{self.settings.work_claim} the one mounted at {self.settings.work_local_root}?)",
                )
            return LaunchOutcome(LaunchVerdict.SUCCEEDED, 0, f"Job {namespace}/{name} completed")
        why = f"Job {namespace}/{name} failed ({finished.reason}: {finished.message})"
        try:
            terminations = await self._terminations(api, name)
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            # Without the pods the condition still tells: only the 1-127 rule uses PodFailurePolicy.
            verdict = (
                LaunchVerdict.FAILED_PERMANENTLY
                if finished.reason == "PodFailurePolicy"
                else LaunchVerdict.FAILED_RETRYABLE
            )
            return LaunchOutcome(verdict, None, f"{why}; its pods could not be listed: {error}")
        permanent = [t for t in terminations if verdict_for_exit_code(t[1]) is LaunchVerdict.FAILED_PERMANENTLY]
        if permanent:
            pod, code, message = permanent[-1]
            detail = f"{why}; pod {pod} exited {code}: permanent (exit 1-127: the same input would fail again)"
            return LaunchOutcome(LaunchVerdict.FAILED_PERMANENTLY, code, f"{detail}\n{message}".rstrip())
        if terminations:
            pod, code, message = terminations[-1]
            codes = ", ".join(str(t[1]) for t in terminations)
            detail = f"{why}; pods exited {codes}, last {pod} {_describe_code(code)}: retryable"
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, code, f"{detail}\n{message}".rstrip())
        return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, f"{why}; no pod reported an exit code: retryable")

    async def _terminations(self, api: k8s.ApiClient, name: str) -> list[tuple[str, int, str]]:
        """(pod, exit code, termination message) of the training container of each of the Job's pods, oldest first."""
        pods = await k8s.CoreV1Api(api).list_namespaced_pod(self.settings.namespace, label_selector=f"job-name={name}")
        oldest = datetime.min.replace(tzinfo=UTC)
        found: list[tuple[datetime, str, int, str]] = []
        for pod in pods.items:
            created = (pod.metadata.creation_timestamp if pod.metadata else None) or oldest
            pod_name = (pod.metadata.name if pod.metadata else None) or "?"
            for status in (pod.status.container_statuses if pod.status else None) or []:
                terminated = status.state.terminated if status.state else None
                if status.name == CONTAINER_NAME and terminated is not None:
                    found.append((created, pod_name, terminated.exit_code, terminated.message or ""))
        found.sort(key=lambda item: item[0])
        return [(pod_name, code, message) for _, pod_name, code, message in found]

    async def _delete(self, batch: k8s.BatchV1Api, name: str) -> None:
        """Delete the Job and (in the background, by the garbage collector) its pods. Best effort: a failure is
        logged, since the caller is already reporting or cancelling."""
        try:
            await batch.delete_namespaced_job(
                name, self.settings.namespace, body=m.V1DeleteOptions(propagation_policy="Background")
            )
            logger.info("training Job deleted", extra=with_fields(job=name, namespace=self.settings.namespace))
        except ApiException as error:
            if error.status != 404:
                logger.warning("could not delete training Job %s: %s", name, _describe_api_error(error, "delete"))
        except (aiohttp.ClientError, TimeoutError) as error:
            logger.warning("could not delete training Job %s: %r", name, error)


def _describe_code(code: int) -> str:
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"exit {code} (killed by {signal.Signals(code - 128).name})"
    return f"exit {code}"


def _read_job(job_dir: Path) -> TrainingJob | None:
    try:
        return TrainingJob.read(job_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the run reports a bad job.json itself (exit 2); the launcher only needs names
