# ruff: noqa: S105, S106 -- tokens here are identifiers of design schemas, not passwords
"""The trainer service's parts without a network: event decoding and its rules, offsets to commit, the design
schema's two encodings, model-store key segments, model names, and settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.training.v1 import training_pb2
from modelplane.kafka_delivery import OffsetTracker
from modelplane.spec.names import check_name, model_name_for
from tests.support.training_schemas import iris_multiclass_logistic
from trainer.run.jobs import DatasetSource
from trainer.service.design_store import DesignInvalidError, design_key, parse_schema
from trainer.service.events import PoisonEventError, RecordPosition, dataset_for_run, decode_event, resolve_dataset_path
from trainer.service.model_store import expected_sha256s, path_segment
from trainer.settings import DEFAULT_DESIGN_KEY_TEMPLATE, build_parser, parse_settings

POSITION = RecordPosition("training", 3, 41)


def _event(**fields: object) -> bytes:
    return training_pb2.ModelTrainingEvent(**fields).SerializeToString()  # type: ignore[arg-type]


def _decode(value: bytes | None, root: Path | None, headers: object = (), max_bytes: int = 1 << 20) -> object:
    return decode_event(
        value,
        list(headers) if isinstance(headers, list | tuple) else headers,
        POSITION,
        max_bytes=max_bytes,
        datasets_root=root,
    )


def test_binary_event_with_token_and_relative_path_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "iris.csv").write_text("a\n1\n")
    request = decode_event(
        _event(event_id="e-1", model_key_token="iris-lr", dataset_path="iris.csv"),
        [],
        POSITION,
        max_bytes=1 << 20,
        datasets_root=tmp_path,
    )
    assert request.event_id == "e-1"
    assert request.model_key_token == "iris-lr"
    assert request.embedded_schema is None
    assert request.dataset.path == str(tmp_path / "iris.csv")
    assert request.dataset.url == ""


def test_json_event_by_content_type_and_derived_event_id(tmp_path: Path) -> None:
    event = training_pb2.ModelTrainingEvent(model_key_token="tok", dataset_artifact_url="s3://bucket/data/iris.csv")
    value = json_format.MessageToJson(event).encode()
    request = decode_event(
        value, [("Content-Type", b"application/json; charset=utf-8")], POSITION, max_bytes=1 << 20, datasets_root=None
    )
    assert request.event_id == "kafka:training:3:41"
    assert request.dataset.url == "s3://bucket/data/iris.csv"


def test_embedded_schema_is_used_without_a_token() -> None:
    schema = iris_multiclass_logistic(design_token="embedded-design")
    request = decode_event(
        _event(event_id="e", design_schema=schema, dataset_artifact_url="https://example.org/iris.csv"),
        [],
        POSITION,
        max_bytes=1 << 20,
        datasets_root=None,
    )
    assert request.embedded_schema == schema
    assert request.provisional_design_id == "embedded-design"


def test_token_wins_over_embedded_schema() -> None:
    schema = iris_multiclass_logistic(design_token="summary")
    request = decode_event(
        _event(event_id="e", model_key_token="full", design_schema=schema, dataset_artifact_url="s3://b/k"),
        [],
        POSITION,
        max_bytes=1 << 20,
        datasets_root=None,
    )
    assert request.embedded_schema is None
    assert request.provisional_design_id == "full"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event_id": "e", "dataset_path": "x.csv"}, "names no design schema"),
        (
            {"event_id": "e", "model_key_token": "t"},
            "exactly one of dataset_path and dataset_artifact_url; it names neither",
        ),
        (
            {"event_id": "e", "model_key_token": "t", "dataset_path": "x.csv", "dataset_artifact_url": "s3://b/k"},
            "it names both",
        ),
        ({"event_id": "e", "model_key_token": "t", "dataset_path": "../etc/passwd"}, "contains '..'"),
        ({"event_id": "e", "model_key_token": "t", "dataset_path": "/etc/passwd"}, "outside the datasets root"),
        ({"event_id": "e", "model_key_token": "t", "dataset_artifact_url": "ftp://h/x"}, "scheme must be one of"),
        ({"event_id": "e", "model_key_token": "t", "dataset_artifact_url": "file:///etc/passwd"}, "outside"),
        ({"event_id": "e", "model_key_token": "t", "dataset_artifact_url": "s3://bucket"}, "names no bucket"),
        ({"event_id": "bad id!", "model_key_token": "t", "dataset_path": "x.csv"}, "event_id"),
        ({"event_id": "e", "model_key_token": "has space", "dataset_path": "x.csv"}, "whitespace"),
        ({"event_id": "e", "model_key_token": "t" * 300, "dataset_path": "x.csv"}, "limit is 256"),
    ],
)
def test_rule_breaking_events_are_poison_naming_the_rule(tmp_path: Path, fields: dict[str, str], reason: str) -> None:
    with pytest.raises(PoisonEventError) as caught:
        decode_event(_event(**fields), [], POSITION, max_bytes=1 << 20, datasets_root=tmp_path)
    assert reason in caught.value.reason


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    root.mkdir()
    (root / "escape.csv").symlink_to("/etc/hostname")
    with pytest.raises(ValueError, match="outside the datasets root"):
        resolve_dataset_path("escape.csv", root)


def test_dataset_path_without_a_configured_root_is_refused() -> None:
    with pytest.raises(PoisonEventError, match="no --datasets-root"):
        decode_event(
            _event(event_id="e", model_key_token="t", dataset_path="x.csv"),
            [],
            POSITION,
            max_bytes=1 << 20,
            datasets_root=None,
        )


def test_oversized_tombstone_and_unknown_content_type_are_poison() -> None:
    with pytest.raises(PoisonEventError, match="exceeds the limit of 10 bytes"):
        decode_event(b"x" * 11, [], POSITION, max_bytes=10, datasets_root=None)
    with pytest.raises(PoisonEventError, match="tombstone"):
        decode_event(None, [], POSITION, max_bytes=10, datasets_root=None)
    with pytest.raises(PoisonEventError, match="neither protobuf nor application/json"):
        decode_event(b"", [("content-type", b"text/csv")], POSITION, max_bytes=10, datasets_root=None)
    with pytest.raises(PoisonEventError, match="not a ModelTrainingEvent in JSON"):
        decode_event(
            b'{"eventIdd": 1}', [("content-type", b"application/json")], POSITION, max_bytes=99, datasets_root=None
        )


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(value=st.binary(max_size=512), json_header=st.booleans())
def test_random_bytes_are_either_a_valid_request_or_poison_never_a_crash(
    tmp_path: Path, value: bytes, json_header: bool
) -> None:
    headers = [("content-type", b"application/json")] if json_header else []
    try:
        request = decode_event(value, headers, POSITION, max_bytes=1 << 20, datasets_root=tmp_path)
    except PoisonEventError as poison:
        assert poison.reason
        assert poison.event_id
        return
    # Whatever got through obeys every rule.
    assert bool(request.dataset.path) != bool(request.dataset.url)
    assert request.model_key_token or request.embedded_schema is not None
    if request.dataset.path:
        assert Path(request.dataset.path).is_relative_to(tmp_path.resolve())


@given(raw=st.text(max_size=200))
def test_dataset_paths_never_escape_the_root(raw: str) -> None:
    root = Path("/srv/datasets")
    try:
        resolved = resolve_dataset_path(raw, root)
    except ValueError:
        return
    assert resolved == root or resolved.is_relative_to(root)


def test_offsets_commit_only_up_to_the_lowest_unfinished() -> None:
    offsets = OffsetTracker()
    for offset in (5, 6, 7):
        offsets.add(offset)
    assert offsets.to_commit() == 5  # nothing finished: a restart must read from 5 again
    offsets.mark_committed(5)
    offsets.done(6)
    offsets.done(7)
    assert offsets.to_commit() is None  # 5 still runs: committing 6 or 8 would skip it after a crash
    offsets.done(5)
    assert offsets.to_commit() == 8
    offsets.mark_committed(8)
    assert offsets.to_commit() is None


@given(order=st.permutations(list(range(10))))
def test_commit_point_never_passes_an_unfinished_offset(order: list[int]) -> None:
    offsets = OffsetTracker()
    for offset in range(100, 110):
        offsets.add(offset)
    finished: set[int] = set()
    for index in order:
        finished.add(100 + index)
        offsets.done(100 + index)
        point = offsets.to_commit()
        if point is not None:
            assert all(offset in finished for offset in range(100, point))
            offsets.mark_committed(point)
    assert offsets.committed == 110


def test_design_schema_parses_binary_and_json_and_refuses_garbage() -> None:
    schema = iris_multiclass_logistic()
    assert parse_schema(schema.SerializeToString(), "k") == schema
    assert parse_schema(json_format.MessageToJson(schema).encode(), "k") == schema
    with pytest.raises(DesignInvalidError, match="design schema k is not a protobuf"):
        parse_schema(b"\xff\xff\xff", "k")
    with pytest.raises(DesignInvalidError, match="in JSON"):
        parse_schema(b'{"nope": 1}', "k")
    assert design_key(DEFAULT_DESIGN_KEY_TEMPLATE, "a{b}") == "modelplane:design:a{b}"


def test_path_segments_and_model_names_are_safe_and_distinct() -> None:
    assert path_segment("iris-lr", "x") == "iris-lr"
    unsafe = path_segment("../a/b", "x")
    assert "/" not in unsafe
    assert not unsafe.startswith(".")
    assert path_segment("a/b", "x") != path_segment("a_b", "x")
    assert path_segment("", "fallback") == "fallback"
    for token in ("iris-lr", "Iris_LR", "x" * 100, "--", "ünïcode"):
        check_name(model_name_for(token))
    assert model_name_for("Iris_LR") != model_name_for("iris-lr")


def test_expected_sha256s_reads_result_and_metadata(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text('{"artifact": {"sha256": "ABC"}}')
    assert expected_sha256s(tmp_path, "abc") == {"abc"}
    (tmp_path / "metadata.json").write_text('{"artifact_sha256": "def"}')
    assert expected_sha256s(tmp_path, "abc") == {"abc", "def"}


def test_settings_from_flags_and_environment(tmp_path: Path) -> None:
    parser = build_parser(argparse.ArgumentParser())
    settings_ = parse_settings(
        parser,
        ["--training-topic=t1", f"--datasets-root={tmp_path}", "--status-listen=127.0.0.1:0"],
        environ={"MODELPLANE_TRAINER_MAX_ATTEMPTS": "5", "MODELPLANE_TRAINER_S3_SECRET_KEY": "sekrit"},
    )
    assert settings_.training_topic == "t1"
    assert settings_.max_attempts == 5
    assert settings_.s3.secret_key == "sekrit"
    assert "sekrit" not in repr(settings_)
    assert settings_.datasets_root == tmp_path.resolve()
    assert settings_.design_key_template == "modelplane:design:{token}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--training-topic=bad topic"],
        ["--design-key-template=no-token"],
        ["--design-key-template={token}{other}"],
        ["--max-attempts=0"],
        ["--artifact-name=../x.pkl"],
        ["--s3-endpoint=http://127.0.0.1:9000"],
        ["--auto-deploy", "--scheduler=10.0.0.1:9004"],
        ["--status-listen=0.0.0.0:9600"],  # plaintext off loopback, without --insecure or --serve-tls-*
        ["--serve-tls-cert=/nonexistent/cert.pem", "--serve-tls-key=/nonexistent/key.pem"],
    ],
)
def test_bad_settings_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(build_parser(argparse.ArgumentParser()), argv, environ={})
    assert exited.value.code == 2
    assert capsys.readouterr().err


def test_kubernetes_launcher_is_built_from_settings_and_datasets_are_seen_at_the_jobs_mount(tmp_path: Path) -> None:
    from trainer.launchers.kubernetes_job import KubernetesJobLauncher  # noqa: PLC0415 - heavy, this test only
    from trainer.process import default_launcher  # noqa: PLC0415

    settings_ = parse_settings(
        build_parser(argparse.ArgumentParser()),
        [
            "--launcher=kubernetes",
            "--k8s-image=registry.example/modelplane-train:1",
            "--k8s-work-claim=trainer-work",
            "--k8s-dataset-claim=datasets",
            "--k8s-env-secret=s3-credentials",
            f"--work-dir={tmp_path / 'work'}",
            f"--datasets-root={tmp_path}",
        ],
        environ={"MODELPLANE_TRAINER_S3_SECRET_KEY": "sekrit"},
    )
    launcher = default_launcher(settings_)
    assert isinstance(launcher, KubernetesJobLauncher)
    job = launcher.settings
    assert (job.image, job.work_claim, job.dataset_claim, job.env_from_secret) == (
        "registry.example/modelplane-train:1",
        "trainer-work",
        "datasets",
        "s3-credentials",
    )
    assert job.work_local_root == tmp_path / "work"
    assert "sekrit" not in json.dumps(dict(job.env))  # credentials come from the Secret, not the Job spec
    assert settings_.run_datasets_root == Path("/datasets")
    (tmp_path / "sales").mkdir()
    (tmp_path / "sales" / "q1.csv").write_text("x\n")
    request = decode_event(
        training_pb2.ModelTrainingEvent(
            event_id="e", model_key_token="t", dataset_path="sales/q1.csv"
        ).SerializeToString(),
        [],
        POSITION,
        max_bytes=1 << 20,
        datasets_root=settings_.datasets_root,
    )
    seen = dataset_for_run(request.dataset, settings_.datasets_root, settings_.run_datasets_root)
    assert seen.path == "/datasets/sales/q1.csv"
    as_url = dataset_for_run(DatasetSource(url=(tmp_path / "sales" / "q1.csv").as_uri()), tmp_path, Path("/datasets"))
    assert as_url.url == "file:///datasets/sales/q1.csv"
    assert dataset_for_run(DatasetSource(url="s3://b/k.csv"), tmp_path, Path("/datasets")).url == "s3://b/k.csv"


def test_kubernetes_launcher_needs_an_image_and_a_work_claim(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(build_parser(argparse.ArgumentParser()), ["--launcher=kubernetes"], environ={})
    assert "--k8s-image and --k8s-work-claim" in capsys.readouterr().err
