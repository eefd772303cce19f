"""The registry's S3 and Kafka settings as its command line, environment and files give them (parse_settings):
the trainer's --s3-* flags and secret-key sources, none by default, and every refusal a usage error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from registry.settings import RegistrySettings, build_parser, parse_settings


def settings(tmp_path: Path, *argv: str, environ: dict[str, str] | None = None) -> RegistrySettings:
    parser = build_parser(argparse.ArgumentParser(prog="modelplane registry"))
    return parse_settings(parser, [f"--state-dir={tmp_path}", *argv], environ or {})


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        settings(tmp_path, *argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_without_s3_flags_there_is_no_store_and_no_consumer(tmp_path: Path) -> None:
    plain = settings(tmp_path)
    assert (plain.model_store, plain.trainer_runs, plain.deploy_storage_secret) == (None, None, "")


def test_the_s3_flags_and_the_secret_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    store = settings(
        tmp_path,
        "--s3-endpoint=127.0.0.1:9000",
        "--s3-access-key=ak",
        "--s3-bucket=models",
        environ={"MODELPLANE_REGISTRY_S3_SECRET_KEY": "from-env", "AWS_SECRET_ACCESS_KEY": "later"},
    ).model_store
    assert store is not None
    assert (store.endpoint, store.access_key, store.secret_key, store.bucket, store.prefix, store.secure) == (
        "127.0.0.1:9000",
        "ak",
        "from-env",
        "models",
        "registry",
        False,
    )
    assert "from-env" not in repr(store)
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    from_file = settings(tmp_path, "--s3-endpoint=s3.local:443", "--s3-secure", f"--s3-secret-key-file={key_file}")
    assert from_file.model_store is not None
    assert (from_file.model_store.secret_key, from_file.model_store.url) == ("from-file", "https://s3.local:443")
    from_env = settings(tmp_path, environ={"MODELPLANE_REGISTRY_S3_ENDPOINT": "10.0.0.5:9000"})
    assert from_env.model_store is not None
    assert from_env.model_store.endpoint == "10.0.0.5:9000"


def test_the_trainer_runs_flags(tmp_path: Path) -> None:
    runs = settings(
        tmp_path, "--s3-endpoint=127.0.0.1:9000", "--kafka-bootstrap=127.0.0.1:9092", "--max-status-bytes=64KiB"
    ).trainer_runs
    assert runs is not None
    assert (runs.bootstrap, runs.status_topic, runs.consumer_group, runs.max_message_bytes) == (
        "127.0.0.1:9092",
        "modelplane.training.status",
        "modelplane-registry",
        64 * 1024,
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--s3-secret-key=hunter2"], "--s3-secret-key is not accepted"),
        (["--s3-endpoint=http://127.0.0.1:9000"], "--s3-endpoint is HOST:PORT; use --s3-secure"),
        (["--s3-endpoint=user@127.0.0.1:9000"], "without a path or credentials"),
        (["--kafka-bootstrap=127.0.0.1:9092"], "--kafka-bootstrap needs --s3-endpoint"),
        (["--status-topic=no spaces"], "is not a Kafka topic name"),
        (["--deploy-storage-secret=a/b"], "is not a secret name"),
        (["--max-status-bytes=1"], "--max-status-bytes"),
    ],
)
def test_bad_settings_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    error = refused(tmp_path, capsys, *argv)
    assert said in error
    assert "hunter2" not in error
