"""Run a training job as a Kubernetes batch/v1 Job (seeds/000 step 4, "Create Kubernetes Job").

The Job itself (its volumes, resources, failure policy and labels) is built by kubernetes_manifest.py. The
launcher creates it, then follows it with list+watch by name (resuming from the last ``resourceVersion``,
re-listing after ``410 Gone``, reconnecting when a stream ends) until it is ``Complete`` or ``Failed``. A Job
already there for the run (a trainer restarted mid-run) is adopted, not created again. A failed Job's verdict
comes from its pods' terminated exit codes (1-127 but EXIT_UNAVAILABLE permanent, otherwise retryable) and says
which. Cancelling ``run()`` deletes the Job with ``propagationPolicy: Background``.
API errors become outcomes with a detail a person can act on (401/403 name the RBAC the service account
needs), never an exception out of ``run()``.

It uses the official client's asyncio flavour (``kubernetes.aio``, shipped in the ``kubernetes`` package
since 35.x), so a watch never ties up a thread and cancellation reaches the HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio.client import models as m
from kubernetes.aio.client.exceptions import ApiException

from generated.mlops.training.v1 import training_pb2
from modelplane.kubernetes_api import KubernetesConfigError, kubernetes_client
from modelplane.logs import with_fields
from trainer.launchers.base import LaunchOutcome, LaunchVerdict, verdict_for_exit_code
from trainer.launchers.kubernetes_manifest import (
    CONTAINER_NAME,
    LABEL_MANAGED_BY,
    LABEL_RUN_ID,
    MANAGED_BY,
    KubernetesJobSettings,
    build_job,
    job_name,
    label_value,
)
from trainer.run.jobs import RESULT_FILE, TrainingJob

logger = logging.getLogger(__name__)

_FALLBACK_DEADLINE_SECONDS = 3600  # TrainingJob's own default timeout
_MIN_WATCH_SECONDS = 0.5  # a watch that ended sooner is reopened only after this pause


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
            async with kubernetes_client(self.settings.connection) as api:
                return await self._create_and_follow(api, body, name, run_id, job_dir)
        except KubernetesConfigError as error:
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, str(error))

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
