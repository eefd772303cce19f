"""KubernetesJobLauncher through the real ``kubernetes`` client against a FAKE API server
(tests/support/fake_job_controller.py: no kube-apiserver can run here). The fake applies the Job's own backoffLimit and
podFailurePolicy when a test fails a pod, so the verdicts below follow from the Job the launcher sent."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generated.mlops.training.v1 import training_pb2
from modelplane.kubernetes_api import KubernetesConnection
from tests.support.fake_job_controller import FakeJobController
from tests.support.fake_kubernetes_api import JOBS
from trainer.launchers.base import LaunchOutcome, LaunchVerdict
from trainer.launchers.kubernetes_job import KubernetesJobLauncher
from trainer.launchers.kubernetes_manifest import (
    KubernetesJobSettings,
    build_job,
    job_name,
    label_value,
)
from trainer.run.jobs import DatasetSource, RunResult, TrainingJob

TOKEN = "fake-service-account-token"  # noqa: S105 - the fake server's throwaway token
DATASET_PATH = "/mnt/datasets"  # the seed's datasetPath
JOB = "modelplane-train-run-1"


@pytest.fixture
async def fake() -> AsyncIterator[FakeJobController]:
    async with FakeJobController(token=TOKEN) as server:
        yield server


def settings_for(fake: FakeJobController, tmp_path: Path, **overrides: Any) -> KubernetesJobSettings:
    base = KubernetesJobSettings(
        image="registry.local/modelplane-train-retail:1",
        work_claim="modelplane-work",
        work_local_root=tmp_path / "work",
        work_mount_path="/modelplane/jobs",
        namespace="training",
        service_account="modelplane-trainer",
        dataset_claim="retail-datasets",
        dataset_mount_path=DATASET_PATH,
        backoff_limit=1,
        ttl_seconds_after_finished=600,
        env={"MODELPLANE_S3_ENDPOINT": "http://s3.internal:9000"},
        env_from_secret="modelplane-s3",  # noqa: S106 - a Secret's name
        connection=KubernetesConnection(host=fake.url, token=TOKEN),
    )
    return replace(base, **overrides)


def make_job_dir(tmp_path: Path, run_id: str = "run-1", timeout_seconds: float = 900.0) -> Path:
    job_dir = tmp_path / "work" / "2026" / run_id
    job_dir.mkdir(parents=True)
    dataset = DatasetSource(path=f"{DATASET_PATH}/retail.csv")
    TrainingJob(run_id, "event-1", dataset, timeout_seconds=timeout_seconds).write(job_dir)
    return job_dir


def schema_with_cpu(cores: int = 2, ram_gib: float = 1.5) -> training_pb2.ModelDesignSchema:
    schema = training_pb2.ModelDesignSchema()
    schema.design_token.value = "designs/retail forecasting:v1"
    schema.model_framework.compute_dependencies.cpu.no_of_cores = cores
    schema.model_framework.compute_dependencies.cpu.ram = ram_gib
    return schema


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def watch_requests(fake: FakeJobController) -> list[dict[str, str]]:
    return [r.query for r in fake.requests_for("GET", "/jobs") if r.query.get("watch") == "true"]


async def started(
    fake: FakeJobController, launcher: KubernetesJobLauncher, job_dir: Path, schema: training_pb2.ModelDesignSchema
) -> asyncio.Task[LaunchOutcome]:
    """Start ``run`` and return once the Job exists and the launcher is watching it."""
    task = asyncio.create_task(launcher.run(job_dir, schema))
    await eventually(lambda: len(watch_requests(fake)) >= 1 or task.done(), "the launcher to watch the Job")
    assert not task.done(), task.result()
    return task


def write_result(job_dir: Path) -> None:
    """What the Job's pod does through the shared work volume before it exits 0."""
    RunResult(succeeded=True, metrics={"accuracy": 0.91}).write(job_dir)


async def test_the_job_sent_is_what_the_schema_and_settings_imply(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    launcher = KubernetesJobLauncher(settings_for(fake, tmp_path))
    task = await started(fake, launcher, job_dir, schema_with_cpu())
    write_result(job_dir)
    fake.complete(JOB, namespace="training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome == LaunchOutcome(LaunchVerdict.SUCCEEDED, 0, f"Job training/{JOB} completed")

    (create,) = fake.requests_for("POST", "/namespaces/training/jobs")
    job = create.body
    assert job is not None
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    labels = {
        "app.kubernetes.io/managed-by": "modelplane",
        "modelplane.io/run-id": "run-1",
        "modelplane.io/design-token": label_value("designs/retail forecasting:v1"),
    }
    assert job["metadata"] == {"name": JOB, "namespace": "training", "labels": labels}
    assert re.fullmatch(r"designs-retail-forecasting-v1-[0-9a-f]{8}", labels["modelplane.io/design-token"])
    spec = job["spec"]
    assert spec["backoffLimit"] == 1
    assert spec["activeDeadlineSeconds"] == 900  # job.json's timeout_seconds
    assert spec["ttlSecondsAfterFinished"] == 600
    fail_rule, ignore_rule = spec["podFailurePolicy"]["rules"]
    # 1-127 fail the Job at once, but 75 (EXIT_UNAVAILABLE: the dataset's store was unreachable) is retried.
    permanent = [*range(1, 75), *range(76, 128)]
    assert fail_rule == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "train", "operator": "In", "values": permanent},
    }
    assert ignore_rule == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = spec["template"]
    assert pod["metadata"]["labels"] == labels
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "modelplane-trainer"
    assert pod["spec"]["volumes"] == [
        {"name": "work", "persistentVolumeClaim": {"claimName": "modelplane-work"}},
        {"name": "dataset", "persistentVolumeClaim": {"claimName": "retail-datasets", "readOnly": True}},
    ]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "train"
    assert container["image"] == "registry.local/modelplane-train-retail:1"
    assert container["command"] == ["python", "-m", "trainer.run.run_job", "/modelplane/jobs/2026/run-1"]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "1536Mi"},
        "limits": {"cpu": "2", "memory": "1536Mi"},
    }
    assert container["volumeMounts"] == [
        {"name": "work", "mountPath": "/modelplane/jobs"},
        {"name": "dataset", "mountPath": DATASET_PATH, "readOnly": True},
    ]
    assert container["env"] == [
        {"name": "MODELPLANE_RUN_ID", "value": "run-1"},
        {"name": "MODELPLANE_DATASET_ROOT", "value": DATASET_PATH},
        {"name": "MODELPLANE_S3_ENDPOINT", "value": "http://s3.internal:9000"},
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "modelplane-s3"}}]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # Followed by name, from the version the create answered with.
    first_watch = watch_requests(fake)[0]
    assert first_watch["fieldSelector"] == f"metadata.name={JOB}"
    assert first_watch["resourceVersion"] == "1001"


@pytest.mark.parametrize(
    ("gpu_type", "count", "resource", "quantity"),
    [
        (training_pb2.GPU_TYPE_NVIDIA_DEFAULT, 0, "nvidia.com/gpu", "1"),
        (training_pb2.GPU_TYPE_NVIDIA, 2, "nvidia.com/gpu", "2"),
        (training_pb2.GPU_TYPE_AMD, 4, "amd.com/gpu", "4"),
    ],
)
def test_gpu_compute_requests_the_vendors_device(gpu_type: int, count: int, resource: str, quantity: str) -> None:
    schema = training_pb2.ModelDesignSchema()
    schema.model_framework.compute_dependencies.gpu.gpu_type = gpu_type  # type: ignore[assignment]
    schema.model_framework.compute_dependencies.gpu.count = count
    settings = KubernetesJobSettings(image="i", work_claim="w", work_local_root=Path("/w"))
    job = build_job(settings, schema, name="n", run_id="r", pod_job_dir="/p", image="i", deadline_seconds=60)
    assert job.spec is not None
    resources = job.spec.template.spec.containers[0].resources  # type: ignore[union-attr]
    assert resources is not None
    assert resources.limits == {resource: quantity}
    assert resources.requests == {resource: quantity}


def test_no_compute_means_no_resources_and_no_dataset_claim_means_no_dataset_volume() -> None:
    settings = KubernetesJobSettings(image="i", work_claim="w", work_local_root=Path("/w"))
    job = build_job(
        settings,
        training_pb2.ModelDesignSchema(),
        name="n",
        run_id="r",
        pod_job_dir="/p",
        image="i",
        deadline_seconds=1,
    )
    pod = job.spec.template.spec  # type: ignore[union-attr]
    assert pod is not None
    assert pod.containers[0].resources is None
    assert [volume.name for volume in pod.volumes or []] == ["work"]


async def test_exit_2_fails_the_job_at_once_and_is_permanent(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    fake.fail_pod(JOB, 2, message="error: column 'price' is missing from the dataset", namespace="training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert outcome.exit_code == 2
    assert "PodFailurePolicy" in outcome.detail
    assert "exited 2: permanent" in outcome.detail
    assert "column 'price' is missing" in outcome.detail  # the pod's termination message (its log tail)
    assert len(fake.pods_of(JOB, "training")) == 1  # no retry for a permanent failure


async def test_exit_137_is_retried_by_backoff_then_reported_retryable(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    fake.fail_pod(JOB, 137, namespace="training")
    assert len(fake.pods_of(JOB, "training")) == 2  # backoffLimit 1: the Job controller started a second pod
    await asyncio.sleep(0.2)
    assert not task.done()  # one failed pod does not end the Job
    fake.fail_pod(JOB, 137, namespace="training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.exit_code == 137
    assert "BackoffLimitExceeded" in outcome.detail
    assert "pods exited 137, 137" in outcome.detail
    assert "killed by SIGKILL" in outcome.detail
    assert outcome.detail.splitlines()[0].endswith(": retryable")


async def test_deadline_exceeded_is_retryable(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    fake.exceed_deadline(JOB, namespace="training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.exit_code == 143
    assert "DeadlineExceeded" in outcome.detail


async def test_complete_without_result_json_is_a_clear_failure(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    fake.complete(JOB, namespace="training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert "holds no result.json" in outcome.detail
    assert "modelplane-work" in outcome.detail


async def test_watch_resumes_from_the_last_version_after_the_stream_closes(
    fake: FakeJobController, tmp_path: Path
) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    await asyncio.sleep(0.1)  # let the launcher read the pod-started event (version 1003)
    fake.close_watches()
    await eventually(lambda: len(watch_requests(fake)) >= 2, "a second watch")
    assert watch_requests(fake)[1]["resourceVersion"] == fake.job(JOB, "training")["metadata"]["resourceVersion"]
    write_result(job_dir)
    fake.complete(JOB, namespace="training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.SUCCEEDED
    assert len(fake.requests_for("POST", "/jobs")) == 1


async def test_an_expired_watch_version_makes_it_relist(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    await asyncio.sleep(0.1)
    # The Job finishes while the launcher is disconnected, and its version is compacted away: only a re-list
    # (not a resumed watch) can show the Complete condition.
    write_result(job_dir)
    fake.compact()
    fake.close_watches()
    fake.complete(JOB, namespace="training")
    fake.compact()
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.SUCCEEDED
    lists = [r.query for r in fake.requests_for("GET", "/jobs") if "watch" not in r.query]
    assert lists == [{"fieldSelector": f"metadata.name={JOB}"}]


async def test_server_errors_while_watching_are_retried(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    fake.inject_error("GET", "/namespaces/training/jobs", 503, "ServiceUnavailable", times=2)
    task = asyncio.create_task(KubernetesJobLauncher(settings_for(fake, tmp_path)).run(job_dir, schema_with_cpu()))
    await eventually(lambda: len(watch_requests(fake)) >= 3, "the third watch attempt")
    write_result(job_dir)
    fake.complete(JOB, namespace="training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.SUCCEEDED


async def test_cancelling_run_deletes_the_job_in_the_background(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (delete,) = fake.requests_for("DELETE", f"/namespaces/training/jobs/{JOB}")
    assert delete.body is not None
    assert delete.body["propagationPolicy"] == "Background"
    assert fake.objects(JOBS) == []
    assert fake.pods_of(JOB, "training") == []


@pytest.mark.parametrize(("status", "reason"), [(403, "Forbidden"), (401, "Unauthorized")])
async def test_a_refused_create_is_a_clear_outcome(
    fake: FakeJobController, tmp_path: Path, status: int, reason: str
) -> None:
    fake.inject_error("POST", "/jobs", status, reason)
    outcome = await KubernetesJobLauncher(settings_for(fake, tmp_path)).run(make_job_dir(tmp_path), schema_with_cpu())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.exit_code is None
    assert outcome.detail.startswith(f"creating Job training/{JOB}: HTTP {status} fake: injected {status} {reason}")
    assert "service account needs batch/jobs create" in outcome.detail
    assert watch_requests(fake) == []


async def test_a_wrong_token_is_refused_with_401(fake: FakeJobController, tmp_path: Path) -> None:
    settings = settings_for(fake, tmp_path, connection=KubernetesConnection(host=fake.url, token="wrong"))  # noqa: S106
    outcome = await KubernetesJobLauncher(settings).run(make_job_dir(tmp_path), schema_with_cpu())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert "HTTP 401" in outcome.detail
    assert fake.objects(JOBS) == []


async def test_a_second_launch_of_the_same_run_follows_the_existing_job(
    fake: FakeJobController, tmp_path: Path
) -> None:
    """A trainer restarted mid-run launches the run again: 409 on create, then it follows the Job already there."""
    job_dir = make_job_dir(tmp_path)
    launcher = KubernetesJobLauncher(settings_for(fake, tmp_path))
    first = await started(fake, launcher, job_dir, schema_with_cpu())
    second = asyncio.create_task(launcher.run(job_dir, schema_with_cpu()))
    await eventually(lambda: len(watch_requests(fake)) >= 2, "the second launch to watch")
    write_result(job_dir)
    fake.complete(JOB, namespace="training")
    outcomes = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert [outcome.verdict for outcome in outcomes] == [LaunchVerdict.SUCCEEDED] * 2
    assert len(fake.requests_for("POST", "/jobs")) == 2
    assert len(fake.objects(JOBS)) == 1


async def test_409_for_someone_elses_job_is_a_clear_outcome(fake: FakeJobController, tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path)
    launcher = KubernetesJobLauncher(settings_for(fake, tmp_path))
    first = await started(fake, launcher, job_dir, schema_with_cpu())
    someone_elses = fake.job(JOB, "training")
    someone_elses["metadata"]["labels"]["modelplane.io/run-id"] = "another-run"
    fake.put(JOBS, someone_elses)
    outcome = await launcher.run(job_dir, schema_with_cpu())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert "HTTP 409 a Job of that name exists and is not run run-1's" in outcome.detail
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_job_dir_outside_the_work_volume_is_a_configuration_error(
    fake: FakeJobController, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outcome = await KubernetesJobLauncher(settings_for(fake, tmp_path)).run(elsewhere, schema_with_cpu())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.detail.startswith("configuration: job directory")
    assert fake.requests == []


async def test_an_image_that_cannot_exist_for_the_schema_is_permanent(fake: FakeJobController, tmp_path: Path) -> None:
    def image_for(schema: training_pb2.ModelDesignSchema) -> str:
        raise ValueError("dependency 'numpy; os.system(1)' is not a plain requirement")

    settings = settings_for(fake, tmp_path, image=image_for)
    outcome = await KubernetesJobLauncher(settings).run(make_job_dir(tmp_path), schema_with_cpu())
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert "is not a plain requirement" in outcome.detail
    assert fake.requests == []


async def test_the_image_callable_is_asked_with_the_schema(fake: FakeJobController, tmp_path: Path) -> None:
    seen: list[str] = []

    def image_for(schema: training_pb2.ModelDesignSchema) -> str:
        seen.append(schema.design_token.value)
        return "registry.local/built:7"

    job_dir = make_job_dir(tmp_path)
    task = await started(
        fake, KubernetesJobLauncher(settings_for(fake, tmp_path, image=image_for)), job_dir, schema_with_cpu()
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["designs/retail forecasting:v1"]
    body = fake.requests_for("POST", "/jobs")[0].body
    assert body is not None
    assert body["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/built:7"


async def test_negative_compute_is_bad_input(fake: FakeJobController, tmp_path: Path) -> None:
    outcome = await KubernetesJobLauncher(settings_for(fake, tmp_path)).run(
        make_job_dir(tmp_path), schema_with_cpu(cores=-1)
    )
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert "no_of_cores -1" in outcome.detail
    assert fake.requests == []


LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@given(st.text(max_size=200))
def test_any_token_becomes_a_valid_label_value(token: str) -> None:
    value = label_value(token)
    assert len(value) <= 63
    assert LABEL_VALUE.fullmatch(value), value
    if LABEL_VALUE.fullmatch(token) and len(token) <= 63:
        assert value == token  # valid values pass unchanged


@given(st.text(min_size=1, max_size=200))
def test_any_run_id_becomes_a_valid_job_name(run_id: str) -> None:
    name = job_name("modelplane-train", run_id)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name


def test_different_invalid_tokens_do_not_collapse_into_one_label() -> None:
    assert label_value("a/b") != label_value("a:b")
    assert job_name("p", "Run_1") != job_name("p", "run-1")


async def test_a_job_deleted_by_someone_else_is_a_clear_retryable_outcome(
    fake: FakeJobController, tmp_path: Path
) -> None:
    job_dir = make_job_dir(tmp_path)
    task = await started(fake, KubernetesJobLauncher(settings_for(fake, tmp_path)), job_dir, schema_with_cpu())
    fake.delete_job(JOB, "training")
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert f"Job training/{JOB} was deleted before it finished" in outcome.detail


async def test_a_persistently_failing_api_makes_it_give_up_and_delete_the_job(
    fake: FakeJobController, tmp_path: Path
) -> None:
    job_dir = make_job_dir(tmp_path)
    fake.inject_error("GET", "/namespaces/training/jobs", 500, "InternalError", times=100)
    launcher = KubernetesJobLauncher(settings_for(fake, tmp_path, api_retries=2))
    outcome = await asyncio.wait_for(launcher.run(job_dir, schema_with_cpu()), 20)
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.detail.startswith(f"following Job training/{JOB}: HTTP 500")
    assert outcome.detail.endswith(f"Job training/{JOB} deleted")
    assert len(watch_requests(fake)) == 3  # the first attempt and two retries
    assert fake.objects(JOBS) == []  # a Job nobody follows must not run on


async def test_an_unreachable_api_server_is_a_clear_outcome(tmp_path: Path) -> None:
    closed = FakeJobController()
    url = await closed.start()
    await closed.stop()  # nothing listens there any more
    settings = KubernetesJobSettings(
        image="i", work_claim="w", work_local_root=tmp_path / "work", connection=KubernetesConnection(host=url)
    )
    outcome = await KubernetesJobLauncher(settings).run(make_job_dir(tmp_path), schema_with_cpu())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.detail.startswith(f"Job default/{JOB}: API server unreachable")
