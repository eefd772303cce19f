"""The training image: the Dockerfile and requirements generated from a schema (text), the refusal of unsafe
dependency strings (examples and hypothesis), and a REAL build through Podman's Docker Engine API
(tests/support/podman_engine.py). The real build is ``FROM scratch`` without ``RUN pip install``: nothing can be
pulled or installed here, so the ``RUN pip install`` path is checked as text only."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from generated.mlops.training.v1 import training_pb2
from modelplane.kubernetes_api import KubernetesConnection
from tests.support.fake_job_controller import FakeJobController
from tests.support.fake_kubernetes_api import JOBS
from trainer.launchers.base import LaunchVerdict
from trainer.launchers.image_build import (
    CONTENT_HASH_LABEL,
    RUN_REQUIREMENTS,
    SOURCE_PATHS,
    ImageBuilder,
    ImageBuildError,
    ImageBuildSettings,
    ImageSpec,
    InvalidImageSpec,
    image_spec,
    plain_requirement,
)
from trainer.launchers.kubernetes_job import KubernetesJobLauncher
from trainer.launchers.kubernetes_manifest import KubernetesJobSettings
from trainer.run.jobs import DatasetSource, RunResult, TrainingJob

pytest_plugins = ["tests.support.podman_engine"]


def retail_schema(
    *, framework_version: str = "1.5.2", packages: tuple[str, ...] = ("pandas >= 2.2, <3", "pyarrow[parquet]==17.0")
) -> training_pb2.ModelDesignSchema:
    schema = training_pb2.ModelDesignSchema()
    schema.design_token.value = "designs/Retail Forecasting"
    schema.version.version = "v2"
    framework = schema.model_framework.model_framework
    framework.framework_type = training_pb2.MODEL_FRAMEWORK_SKLEARN
    framework.framework_version = framework_version
    schema.model_framework.dependencies.packages.extend(packages)
    return schema


# -- the generated text ------------------------------------------------------------------------------------------


def test_dockerfile_pins_the_framework_and_dependencies_and_labels_the_image() -> None:
    spec = image_spec(retail_schema(), ImageBuildSettings(registry_prefix="registry.local:5000/ml"))
    assert re.fullmatch(r"registry\.local:5000/ml/modelplane-train-designs-retail-forecasting-[0-9a-f]{8}:v2", spec.tag)
    assert spec.requirements == (
        "scikit-learn==1.5.2",
        "pandas>=2.2,<3",
        "pyarrow[parquet]==17.0",
        *run_pins("numpy", "joblib", "protobuf", "minio"),
    )
    lines = spec.dockerfile.splitlines()
    assert lines[0] == "FROM python:3.11-slim"
    assert 'LABEL io.modelplane.design-token="designs/Retail Forecasting"' in lines
    assert 'LABEL io.modelplane.design-version="v2"' in lines
    assert 'LABEL io.modelplane.framework="scikit-learn"' in lines
    assert 'LABEL io.modelplane.framework-version="1.5.2"' in lines
    assert 'LABEL org.opencontainers.image.version="v2"' in lines
    assert 'LABEL org.opencontainers.image.licenses="Apache-2.0"' in lines
    # The code goes in last (the pinned dependencies' layer is reused across code changes), each of SOURCE_PATHS
    # where the run's PYTHONPATH finds it (which paths: tests/trainer/test_run_core.py, from what the run imports).
    copies = [f"COPY {path} /opt/modelplane/{path}" for path in SOURCE_PATHS]
    assert "COPY modelplane/s3.py /opt/modelplane/modelplane/s3.py" in copies
    assert lines[-(len(copies) + 3) :] == [
        "COPY requirements.txt /opt/modelplane/requirements.txt",
        'RUN ["python", "-m", "pip", "install", "--no-cache-dir", "-r", "/opt/modelplane/requirements.txt"]',
        *copies,
        'ENTRYPOINT ["python", "-m", "trainer.run.run_job"]',
    ]
    assert "ENV PYTHONPATH=/opt/modelplane PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1" in lines


def test_without_install_there_is_no_run_step_and_the_base_is_configurable() -> None:
    spec = image_spec(retail_schema(), ImageBuildSettings(base_image="scratch", install_dependencies=False))
    assert spec.dockerfile.startswith("FROM scratch\n")
    assert "RUN" not in spec.dockerfile
    assert "COPY requirements.txt /opt/modelplane/requirements.txt" in spec.dockerfile


def test_the_default_framework_version_is_the_installed_scikit_learn() -> None:
    schema = retail_schema(framework_version="", packages=())
    schema.model_framework.model_framework.framework_type = training_pb2.MODEL_FRAMEWORK_SKLEARN_DEFAULT
    spec = image_spec(schema, ImageBuildSettings())
    import sklearn  # noqa: PLC0415 - only this test needs it

    assert spec.requirements == (f"scikit-learn=={sklearn.__version__}", *run_pins(*RUN_REQUIREMENTS))
    assert spec.labels["io.modelplane.framework-version"] == sklearn.__version__


def run_pins(*packages: str) -> tuple[str, ...]:
    """The run's own requirements the image adds, pinned to the versions installed here."""
    return tuple(f"{package}=={importlib.metadata.version(package)}" for package in packages)


def test_model_dependencies_name_and_version_become_a_pin() -> None:
    schema = retail_schema(packages=("numpy<3",))
    schema.model_framework.dependencies.name = "joblib"
    schema.model_framework.dependencies.version = "1.4.2"
    assert image_spec(schema, ImageBuildSettings()).requirements == (
        "scikit-learn==1.5.2",
        "joblib==1.4.2",
        "numpy<3",
        *run_pins("pandas", "protobuf", "pyarrow", "minio"),
    )


def test_a_design_without_version_is_tagged_latest() -> None:
    schema = retail_schema()
    schema.version.version = ""
    assert image_spec(schema, ImageBuildSettings()).tag.endswith(":latest")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: setattr(s.model_framework.model_framework, "framework_type", 2), "MODEL_FRAMEWORK_TENSORFLOW"),
        (lambda s: setattr(s.model_framework.model_framework, "framework_version", "1.5; rm -rf /"), "not a version"),
        (lambda s: s.model_framework.dependencies.packages.append("scikit-learn==1.0"), "conflicts with the framework"),
        (lambda s: s.design_token.Clear(), "no design_token"),
        (lambda s: setattr(s.design_token, "value", "a\nRUN rm -rf /"), "control characters"),
    ],
)
def test_schemas_no_image_can_be_made_for_are_refused(change: object, message: str) -> None:
    schema = retail_schema()
    change(schema)  # type: ignore[operator]
    with pytest.raises(InvalidImageSpec, match=message):
        image_spec(schema, ImageBuildSettings())


def test_label_values_are_escaped_for_the_dockerfile() -> None:
    schema = retail_schema()
    schema.design_token.value = 'odd "token" with $HOME and \\ backslash'
    spec = image_spec(schema, ImageBuildSettings())
    assert 'LABEL io.modelplane.design-token="odd \\"token\\" with \\$HOME and \\\\ backslash"' in spec.dockerfile


@pytest.mark.parametrize(
    "text",
    [
        "pkg @ https://example.invalid/pkg.whl",
        "git+https://example.invalid/repo.git",
        "--index-url=http://example.invalid/simple",
        "-e .",
        "-r other.txt",
        "numpy; os_name == 'nt'",
        "numpy && curl example.invalid",
        "numpy`id`",
        "$(id)",
        "numpy==1.0 --hash=sha256:abc",
        "../local/package",
        "./wheel.whl",
        "numpy\nRUN rm -rf /",
        "numpy==1.0|sh",
        "",
        "numpy==",
        "==1.0",
        "x" * 201,
    ],
)
def test_anything_but_a_plain_requirement_is_refused(text: str) -> None:
    with pytest.raises(InvalidImageSpec):
        plain_requirement(text)


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("pandas", "pandas"),
        ("pandas >= 2.2 , < 3", "pandas>=2.2,<3"),
        ("pyarrow[parquet,s3]~=17.0", "pyarrow[parquet,s3]~=17.0"),
        ("Torch_Vision.lib===0.1.post1", "Torch_Vision.lib===0.1.post1"),
        ("numpy!=2.0.*", "numpy!=2.0.*"),
    ],
)
def test_plain_requirements_are_accepted_and_normalised(text: str, normalised: str) -> None:
    assert plain_requirement(text) == normalised


SAFE = re.compile(r"[A-Za-z0-9._\-\[\],=<>!~*+]+")


@given(st.text(max_size=80))
def test_random_strings_are_refused_or_come_out_free_of_shell_and_pip_syntax(text: str) -> None:
    try:
        requirement = plain_requirement(text)
    except InvalidImageSpec:
        return
    assert SAFE.fullmatch(requirement), requirement
    assert not requirement.startswith("-")


@given(st.text(alphabet=" ;|&$`'\"\\<>()@:/#\n\t-=.abc019[]", max_size=40))
def test_strings_made_of_shell_and_url_syntax_are_refused_or_harmless(text: str) -> None:
    try:
        requirement = plain_requirement(text)
    except InvalidImageSpec:
        return
    assert SAFE.fullmatch(requirement), requirement
    assert requirement[0].isalnum()


# -- a real build through Podman's Docker Engine API --------------------------------------------------------------


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    """A small stand-in for the repository's trainer/run/, generated/, servers/designed_model/ and modelplane/ (vfs
    copies every layer in full)."""
    root = tmp_path / "source"
    (root / "trainer" / "run" / "__pycache__").mkdir(parents=True)
    (root / "generated").mkdir()
    (root / "servers" / "designed_model").mkdir(parents=True)
    (root / "servers" / "designed_model" / "__init__.py").write_text('"""stand-in served design"""\n')
    (root / "servers" / "designed_model_entry.py").write_text('"""stand-in entry module"""\n')
    (root / "modelplane").mkdir()
    (root / "modelplane" / "__init__.py").write_text('"""stand-in modelplane"""\n')
    (root / "modelplane" / "s3.py").write_text('"""stand-in S3 client"""\n')
    (root / "modelplane" / "whole_numbers.py").write_text('"""stand-in whole-number check"""\n')
    (root / "modelplane" / "bounded_text.py").write_text('"""stand-in text cut"""\n')
    (root / "modelplane" / "spec").mkdir()
    (root / "modelplane" / "spec" / "__init__.py").write_text('"""stand-in shared knowledge"""\n')
    (root / "modelplane" / "spec" / "training_algorithms.py").write_text('"""stand-in algorithm catalogue"""\n')
    (root / "trainer" / "__init__.py").write_text('"""stand-in trainer"""\n')
    (root / "trainer" / "service").mkdir()
    (root / "trainer" / "service" / "consumer.py").write_text('"""stand-in service: never in an image"""\n')
    (root / "trainer" / "run" / "run_job.py").write_text("raise SystemExit(0)\n")
    (root / "trainer" / "run" / "__pycache__" / "run_job.cpython-311.pyc").write_bytes(b"\0compiled")
    (root / "generated" / "__init__.py").write_text("")
    return root


@pytest.fixture
def engine(docker_engine_url: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_engine_url, timeout=120)
    yield client
    client.close()


def image_files(client: docker.DockerClient, tag: str) -> dict[str, bytes]:
    """Every regular file in the image's layers (the saved image's layer tars), by path."""
    saved = io.BytesIO(b"".join(client.images.get(tag).save()))
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=saved) as image:
        for member in image.getmembers():
            if not member.isfile() or not member.name.endswith((".tar", "/layer")):
                continue
            layer_data = image.extractfile(member)
            assert layer_data is not None
            with tarfile.open(fileobj=io.BytesIO(layer_data.read())) as layer:
                for entry in layer.getmembers():
                    extracted = layer.extractfile(entry) if entry.isfile() else None
                    if extracted is not None:
                        files[entry.name.lstrip("./")] = extracted.read()
    return files


def test_a_real_build_produces_the_tagged_labelled_image_and_is_not_repeated(
    docker_engine_url: str, engine: docker.DockerClient, source_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ImageBuildSettings(
        docker_url=docker_engine_url,
        registry_prefix="localhost/modelplane-test",
        base_image="scratch",
        install_dependencies=False,
        source_root=source_root,
        network_mode="none",
    )
    builder = ImageBuilder(settings)
    schema = retail_schema()
    schema.design_token.value = 'designs/retail "q$1"'
    builds: list[str] = []
    real_build = builder._build

    def counting_build(client: Any, spec: ImageSpec, context: bytes, content_hash: str) -> None:
        builds.append(spec.tag)
        real_build(client, spec, context, content_hash)

    monkeypatch.setattr(builder, "_build", counting_build)

    tag = builder.image_for(schema)
    try:
        assert tag == builder.spec(schema).tag
        assert tag.startswith("localhost/modelplane-test/modelplane-train-designs-retail-q-1-")
        image = engine.images.get(tag)
        assert tag in image.tags
        labels = image.labels
        assert labels["io.modelplane.design-token"] == 'designs/retail "q$1"'  # escaping survived the parser
        assert labels["io.modelplane.design-version"] == "v2"
        assert labels["io.modelplane.framework"] == "scikit-learn"
        assert labels["io.modelplane.framework-version"] == "1.5.2"
        assert labels["org.opencontainers.image.title"] == tag.rsplit(":", 1)[0].rsplit("/", 1)[1]
        assert labels["org.opencontainers.image.base.name"] == "scratch"
        assert re.fullmatch(r"[0-9a-f]{64}", labels[CONTENT_HASH_LABEL])
        assert image.attrs["Config"]["Entrypoint"] == ["python", "-m", "trainer.run.run_job"]
        assert "PYTHONPATH=/opt/modelplane" in image.attrs["Config"]["Env"]
        files = image_files(engine, tag)
        requirements = files["opt/modelplane/requirements.txt"].decode().splitlines()
        assert requirements[:3] == ["scikit-learn==1.5.2", "pandas>=2.2,<3", "pyarrow[parquet]==17.0"]
        assert requirements[3:] == list(run_pins("numpy", "joblib", "protobuf", "minio"))
        assert files["opt/modelplane/trainer/run/run_job.py"] == b"raise SystemExit(0)\n"
        assert not any(path.startswith("opt/modelplane/trainer/service") for path in files)  # only trainer/run
        assert "opt/modelplane/generated/__init__.py" in files
        assert "opt/modelplane/servers/designed_model/__init__.py" in files
        assert not any("__pycache__" in path for path in files)

        # Same schema, same code: the existing image is used, not rebuilt.
        assert builder.image_for(schema) == tag
        assert builds == [tag]
        first_id = image.id

        # Changed code under the same tag: rebuilt, with a new content hash.
        (source_root / "trainer" / "run" / "run_job.py").write_text("raise SystemExit(3)\n")
        assert builder.image_for(schema) == tag
        assert builds == [tag, tag]
        rebuilt = engine.images.get(tag)
        assert rebuilt.id != first_id
        assert rebuilt.labels[CONTENT_HASH_LABEL] != labels[CONTENT_HASH_LABEL]
    finally:
        for image_id in {engine.images.get(tag).id}:
            engine.images.remove(image_id, force=True)
        engine.images.prune(filters={"dangling": True})


def test_a_failed_build_raises_with_the_build_log(docker_engine_url: str, source_root: Path) -> None:
    settings = ImageBuildSettings(
        docker_url=docker_engine_url,
        registry_prefix="localhost/modelplane-test",
        base_image="localhost/no-such-base:1",  # not present, and pull=False: the build must fail
        install_dependencies=False,
        source_root=source_root,
        network_mode="none",
    )
    with pytest.raises(ImageBuildError) as caught:
        ImageBuilder(settings).image_for(retail_schema())
    message = str(caught.value)
    assert message.startswith("building localhost/modelplane-test/modelplane-train-designs-retail-forecasting-")
    assert "no-such-base" in message
    assert "STEP 1/" in message  # the build log's tail follows the engine's error


def test_an_unreachable_engine_is_a_clear_error(tmp_path: Path, source_root: Path) -> None:
    settings = ImageBuildSettings(docker_url=f"unix://{tmp_path}/nothing.sock", source_root=source_root)
    with pytest.raises(ImageBuildError, match="building localhost/modelplane/modelplane-train-"):
        ImageBuilder(settings).image_for(retail_schema())


async def test_the_kubernetes_launcher_runs_the_image_the_builder_made(
    docker_engine_url: str, engine: docker.DockerClient, source_root: Path, tmp_path: Path
) -> None:
    """ImageBuilder.image_for as KubernetesJobLauncher's image setting (Kubernetes is the FAKE API server)."""
    builder = ImageBuilder(
        ImageBuildSettings(
            docker_url=docker_engine_url,
            registry_prefix="localhost/modelplane-test",
            base_image="scratch",
            install_dependencies=False,
            source_root=source_root,
            network_mode="none",
        )
    )
    fake = FakeJobController()
    await fake.start()
    job_dir = tmp_path / "work" / "run-7"
    job_dir.mkdir(parents=True)
    TrainingJob("run-7", "event-7", DatasetSource(path="/datasets/retail.csv")).write(job_dir)
    settings = KubernetesJobSettings(
        image=builder.image_for,
        work_claim="work",
        work_local_root=tmp_path / "work",
        connection=KubernetesConnection(host=fake.url),
    )
    tag = builder.spec(retail_schema()).tag
    try:
        launcher = KubernetesJobLauncher(settings)
        task = asyncio.create_task(launcher.run(job_dir, retail_schema()))
        for _ in range(1500):  # the build runs in a thread first
            if fake.objects(JOBS) or task.done():
                break
            await asyncio.sleep(0.02)
        RunResult(succeeded=True).write(job_dir)
        fake.complete("modelplane-train-run-7")
        outcome = await asyncio.wait_for(task, 30)
        assert outcome.verdict is LaunchVerdict.SUCCEEDED, outcome.detail
        body = fake.requests_for("POST", "/jobs")[0].body
        assert body is not None
        assert body["spec"]["template"]["spec"]["containers"][0]["image"] == tag
        assert tag in engine.images.get(tag).tags
        assert json.loads((job_dir / "result.json").read_text())["succeeded"] is True
    finally:
        await fake.stop()
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(tag, force=True)
        engine.images.prune(filters={"dangling": True})


def test_a_source_root_without_the_trainer_is_a_clear_error(tmp_path: Path) -> None:
    settings = ImageBuildSettings(docker_url=f"unix://{tmp_path}/unused.sock", source_root=tmp_path)
    with pytest.raises(
        ImageBuildError, match=re.escape("source_root must hold trainer/__init__.py, trainer/run, generated")
    ):
        ImageBuilder(settings).image_for(retail_schema())
