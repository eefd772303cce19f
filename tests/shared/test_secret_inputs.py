"""Secrets come from files or the environment, never from flags: the trainer's S3 secret key and Redis password."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from modelplane.secret_inputs import SecretFileError, read_secret_file
from trainer.settings import TrainerSettings, build_parser, parse_settings

SECRET = "flag-secret-7f3c9a"  # noqa: S105 -- a test value, searched for in messages


def parse(argv: list[str], environ: dict[str, str] | None = None) -> TrainerSettings:
    parser = build_parser(argparse.ArgumentParser())
    return parse_settings(parser, ["--status-listen=127.0.0.1:0", *argv], environ or {})


@pytest.mark.parametrize(
    ("argv", "instead"),
    [
        ([f"--s3-secret-key={SECRET}"], "--s3-secret-key-file"),
        (["--s3-secret-key", SECRET], "--s3-secret-key-file"),
        ([f"--redis-url=redis://:{SECRET}@127.0.0.1:6379/0"], "MODELPLANE_TRAINER_REDIS_URL"),
        (["--redis-url", f"redis://user:{SECRET}@127.0.0.1:6379/0"], "MODELPLANE_TRAINER_REDIS_URL"),
    ],
)
def test_a_secret_flag_is_refused_saying_the_new_way(
    argv: list[str], instead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "process list" in error
    assert instead in error
    assert SECRET not in error


def test_the_s3_secret_key_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "s3-secret-key"
    key_file.write_text(SECRET + "\n")
    from_file = parse([f"--s3-secret-key-file={key_file}"], {"MODELPLANE_TRAINER_S3_SECRET_KEY": "other"})
    assert from_file.s3.secret_key == SECRET
    assert SECRET not in repr(from_file)
    for variable in ("MODELPLANE_TRAINER_S3_SECRET_KEY", "MODELPLANE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert parse([], {variable: SECRET}).s3.secret_key == SECRET
    password_url = f"redis://:{SECRET}@127.0.0.1:6379/0"
    assert parse([], {"MODELPLANE_TRAINER_REDIS_URL": password_url}).redis_url == password_url


def test_a_bad_secret_file_is_a_usage_error_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(SystemExit) as exited:
        parse([f"--s3-secret-key-file={missing}"])
    assert exited.value.code == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe", "not UTF-8"), (b"x" * (64 * 1024 + 1), "larger than")],
)
def test_read_secret_file_refuses_what_cannot_be_a_secret(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(SecretFileError, match=problem):
        read_secret_file(path, "the test secret")
    with pytest.raises(SecretFileError, match="is a folder"):
        read_secret_file(tmp_path, "the test secret")


def test_the_trainer_process_refuses_the_old_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", "trainer", f"--s3-secret-key={SECRET}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--s3-secret-key-file" in done.stderr
    assert SECRET not in done.stderr
