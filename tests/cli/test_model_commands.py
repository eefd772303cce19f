"""``modelplane model ...`` and ``modelplane server status`` against a real scheduler process (no inference
server: with no servers connected every model is ScheduleFailed, which is what these tests rely on)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelplane.cli.main import main
from modelplane.cli.model_commands import CommandError, read_manifest
from tests.support.processes import SchedulerProcess, run_modelplane, start_gateway

MANIFEST = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: {name}
spec:
  storageUri: {uri}
  requirements: [sklearn]
  memory: 10Mi
  replicas: {replicas}
"""
INFER_BODY = '{"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64", "data": [[5.1, 3.5, 1.4, 0.2]]}]}'


def write_manifest(folder: Path, name: str, *, replicas: str = "1") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, uri=folder / "artifacts" / name, replicas=replicas))
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def cli(scheduler: SchedulerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_modelplane(*args, "--scheduler", scheduler.listen)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``modelplane ARGS`` run by calling main() here: quicker than a process, for checks made before any
    connection (usage errors, bad input)."""
    try:
        status = main(list(args))
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)


def assert_clean_failure(result: subprocess.CompletedProcess[str], status: int = 1) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    if "usage: modelplane" not in result.stderr:  # argparse's own errors come after the usage lines
        assert result.stderr.startswith("modelplane: error: ")


def load_and_wait_schedule_failed(scheduler: SchedulerProcess, folder: Path, name: str) -> None:
    loaded = cli(scheduler, "model", "load", "-f", str(write_manifest(folder, name)))
    assert loaded.returncode == 0, loaded.stderr
    watched = cli(scheduler, "model", "status", name, "--watch", "--until", "ScheduleFailed", "--wait-timeout", "10")
    assert watched.returncode == 0, watched.stderr


# ------------------------------------------------------------------------------- against a scheduler


def test_load_status_watch_and_unload(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "iris")
    loaded = cli(scheduler, "model", "load", "-f", str(manifest))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "model iris accepted; follow it with: modelplane model status iris --watch"

    # With no servers connected the model cannot be placed: watching for ScheduleFailed succeeds.
    watched = cli(scheduler, "model", "status", "iris", "--watch", "--until", "ScheduleFailed", "--wait-timeout", "10")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.strip().splitlines()
    assert lines[-1] == "model iris is ScheduleFailed"
    assert "ScheduleFailed" in lines[-2]

    status = cli(scheduler, "model", "status", "iris")
    assert status.returncode == 0, status.stderr
    [row] = status.stdout.strip().splitlines()
    assert row.split()[:3] == ["iris", "v1", "ScheduleFailed"]
    assert "0/1 available" in row
    assert "server=-" in row
    assert row.endswith("(no servers are connected)")

    # The default --until is ModelAvailable: a failed model ends the watch with status 1 and the reason.
    failed = cli(scheduler, "model", "status", "iris", "--watch", "--wait-timeout", "10")
    assert_clean_failure(failed)
    assert "model iris is ScheduleFailed: no servers are connected" in failed.stderr
    assert "ScheduleFailed" in failed.stdout  # the state was printed before giving up

    unloaded = cli(scheduler, "model", "unload", "iris")
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.strip() == "model iris is being unloaded"

    # Unloading a model no replica holds completes at once or nearly so; then the model is unknown.
    deadline = time.monotonic() + 20  # a hang guard, not a performance bound
    while True:
        after = cli(scheduler, "model", "status", "iris")
        if after.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert_clean_failure(after)
    assert "model 'iris' not found" in after.stderr


def test_status_without_a_name_lists_every_model(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    empty = cli(scheduler, "model", "status")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no models")
    for name in ("alpha", "beta", "gamma"):
        loaded = cli(scheduler, "model", "load", "-f", str(write_manifest(tmp_path, name)))
        assert loaded.returncode == 0, loaded.stderr
    deadline = time.monotonic() + 20  # a hang guard, not a performance bound
    while True:
        listed = cli(scheduler, "model", "status")
        assert listed.returncode == 0, listed.stderr
        rows = listed.stdout.strip().splitlines()
        if all("ScheduleFailed" in row for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(row.split()[0] for row in rows) == ["alpha", "beta", "gamma"]
    assert all("ScheduleFailed" in row and "(no servers are connected)" in row for row in rows)


def test_loading_a_changed_manifest_makes_a_new_version(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    load_and_wait_schedule_failed(scheduler, tmp_path, "iris")
    changed = tmp_path / "changed.yaml"
    changed.write_text(MANIFEST.format(name="iris", uri=tmp_path / "elsewhere", replicas="1"))
    assert cli(scheduler, "model", "load", "-f", str(changed)).returncode == 0
    watched = cli(scheduler, "model", "status", "iris", "--watch", "--until", "ScheduleFailed", "--wait-timeout", "10")
    assert watched.returncode == 0, watched.stderr
    status = cli(scheduler, "model", "status", "iris")
    versions = [row.split()[1] for row in status.stdout.strip().splitlines()]
    assert "v2" in versions


def test_status_of_an_unknown_model(scheduler: SchedulerProcess) -> None:
    result = cli(scheduler, "model", "status", "nope")
    assert_clean_failure(result)
    assert "model 'nope' not found" in result.stderr


def test_watching_an_unknown_model_fails_at_once(scheduler: SchedulerProcess) -> None:
    result = cli(scheduler, "model", "status", "nope", "--watch", "--wait-timeout", "60")
    assert_clean_failure(result)
    assert "model 'nope' not found" in result.stderr


def test_unloading_an_unknown_model(scheduler: SchedulerProcess) -> None:
    result = cli(scheduler, "model", "unload", "nope")
    assert_clean_failure(result)
    assert "model 'nope' not found" in result.stderr


def test_a_manifest_the_scheduler_refuses(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "Not_A_Valid_Name")
    result = cli(scheduler, "model", "load", "-f", str(manifest))
    assert_clean_failure(result, status=2)  # bad input, even when it is the scheduler that says so
    assert "model name 'Not_A_Valid_Name' is invalid: use lower-case letters" in result.stderr


def test_infer_on_a_model_that_no_replica_serves(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    """`model infer` goes through the gateway (tests/cli/test_infer_commands.py): a model no replica serves has no
    route there, and the gateway's answer is printed with its reason, not blamed on the connection."""
    load_and_wait_schedule_failed(scheduler, tmp_path, "iris")
    gateway = start_gateway(tmp_path / "gateway", scheduler.listen)
    answers = {
        "iris": "503 Service Unavailable: model 'iris' has no available replica",
        "nope": "404 Not Found: model 'nope' not found",
    }
    for name, answer in answers.items():
        result = run_modelplane("model", "infer", name, "--data", INFER_BODY, "--gateway", gateway.listen)
        assert_clean_failure(result)
        assert f"gateway at {gateway.listen} answered {answer}" in result.stderr


def test_server_status_with_no_servers(scheduler: SchedulerProcess) -> None:
    result = cli(scheduler, "server", "status")
    assert (result.returncode, result.stdout.strip()) == (0, "no servers")


def test_the_scheduler_address_from_the_environment(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    env = {**os.environ, "MODELPLANE_SCHEDULER": scheduler.listen}
    loaded = run_modelplane("model", "load", "-f", str(write_manifest(tmp_path, "iris")), env=env)
    assert loaded.returncode == 0, loaded.stderr
    watched = run_modelplane(
        "model", "status", "iris", "--watch", "--until", "ScheduleFailed", "--wait-timeout", "10", env=env
    )
    assert watched.returncode == 0, watched.stderr
    assert run_modelplane("server", "status", env=env).stdout.strip() == "no servers"
    # A flag wins over the environment.
    overridden = run_modelplane(
        "model", "status", "--scheduler", f"127.0.0.1:{closed_port()}", "--timeout", "5", env=env
    )
    assert_clean_failure(overridden)
    assert "cannot reach the scheduler" in overridden.stderr


GOOD = MANIFEST.format(name="good", uri="/models/good", replicas=1)
BAD_INPUT = [
    ("control-characters", b"\x00\x01\x02 PK\x03\x04 \x1f", "not valid YAML"),
    ("not-utf8", b"apiVersion: \xff\xfe\n", "it is not UTF-8 text (byte 12 is 0xff)"),
    ("yaml-error", b"apiVersion: [unclosed\n", "not valid YAML at line 2, column 1"),
    ("bad-date", GOOD.replace("replicas: 1", "replicas: 2020-13-45").encode(), "month must be in 1..12"),
    ("empty-tag", GOOD.replace("memory: 10Mi", "memory: !!timestamp").encode(), "a tagged value is malformed"),
    ("key-with-newline", (GOOD + '  "two\\nlines": 1\n').encode(), "unknown field(s) 'two\\nlines'"),
    ("kind", GOOD.replace("kind: Model", "kind: Pipeline").encode(), "kind must be Model, not 'Pipeline'"),
    ("huge", b"#" * (2 * 1024 * 1024), "the manifest is larger than 1 MiB"),
    (
        "refused-name",
        GOOD.replace("name: good", "name: Not_A_Valid_Name").encode(),
        "name 'Not_A_Valid_Name' is invalid",
    ),
]


def test_bad_manifests_through_the_cli_exit_2_with_one_line(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    """`modelplane model load -f FILE` against a live scheduler: whatever the file holds, bad input is exit
    status 2 and one line saying what is wrong, never a traceback; the scheduler serves on."""
    for name, data, problem in BAD_INPUT:
        manifest = tmp_path / f"{name}.yaml"
        manifest.write_bytes(data)
        result = cli(scheduler, "model", "load", "-f", str(manifest))
        assert (result.returncode, result.stdout) == (2, ""), (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        [line] = result.stderr.splitlines()
        assert line.startswith("modelplane: error: "), (name, line)
        assert problem in line, (name, line)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert cli(scheduler, "model", "load", "-f", str(good)).returncode == 0
    listed = cli(scheduler, "model", "status")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["good"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode), st.just(GOOD.encode())))
def test_any_file_is_a_model_or_bad_input_on_one_line(tmp_path: Path, data: bytes) -> None:
    manifest = tmp_path / "any.yaml"
    manifest.write_bytes(data)
    try:
        model = read_manifest(manifest)
    except CommandError as error:
        assert error.exit_status == 2
        assert "\n" not in str(error)
        assert str(error).startswith((f"{manifest}: ", f"cannot read {manifest}: "))
    else:
        assert model.meta.name


# ------------------------------------------------------------------------------- without a scheduler


def test_an_invalid_manifest_names_the_file_and_the_field(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "iris", replicas="-1")
    # The manifest is checked before any connection: the closed port is never tried.
    result = run_modelplane("model", "load", "-f", str(manifest), "--scheduler", f"127.0.0.1:{closed_port()}")
    assert_clean_failure(result, status=2)
    assert f"{manifest}: spec.replicas must be between 0 and 1000, not -1" in result.stderr


def test_a_manifest_that_is_not_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text("apiVersion: [unclosed\n")
    result = in_process(capsys, "model", "load", "-f", str(manifest), "--scheduler", f"127.0.0.1:{closed_port()}")
    assert_clean_failure(result, status=2)
    assert f"{manifest}: not valid YAML" in result.stderr


def test_a_missing_manifest(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run_modelplane("model", "load", "-f", str(missing), "--scheduler", f"127.0.0.1:{closed_port()}")
    assert_clean_failure(result, status=2)
    assert f"cannot read {missing}: No such file or directory" in result.stderr


def test_a_manifest_that_is_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = in_process(capsys, "model", "load", "-f", str(tmp_path), "--scheduler", f"127.0.0.1:{closed_port()}")
    assert_clean_failure(result, status=2)
    assert f"cannot read {tmp_path}: Is a directory" in result.stderr


def test_a_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    manifest = tmp_path / "binary.yaml"
    manifest.write_bytes(b"apiVersion: \xff\xfe\n")
    result = run_modelplane("model", "load", "-f", str(manifest), "--scheduler", f"127.0.0.1:{closed_port()}")
    assert_clean_failure(result, status=2)
    assert str(manifest) in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("model", "load", "-f", "MANIFEST"),
        ("model", "unload", "iris"),
        ("model", "status"),
        ("model", "status", "iris"),
        ("model", "status", "iris", "--watch"),
        ("server", "status"),
    ],
    ids=["load", "unload", "status-all", "status", "watch", "server-status"],
)
def test_an_unreachable_scheduler(tmp_path: Path, command: tuple[str, ...]) -> None:
    port = closed_port()
    args = [str(write_manifest(tmp_path, "iris")) if part == "MANIFEST" else part for part in command]
    result = run_modelplane(*args, "--scheduler", f"127.0.0.1:{port}", "--timeout", "5")
    assert_clean_failure(result)
    assert f"cannot reach the scheduler at 127.0.0.1:{port}: is `modelplane scheduler` running there?" in result.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{bad", "--data is not JSON"),
        ("", "--data is not JSON"),
        ("[1, 2]", "--data must be a V2 inference request"),
        ('{"inputs": {}}', "--data must be a V2 inference request"),
        ('{"outputs": []}', "--data must be a V2 inference request"),
    ],
)
def test_infer_data_is_checked_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str], data: str, message: str
) -> None:
    result = in_process(capsys, "model", "infer", "iris", "--data", data, "--gateway", f"127.0.0.1:{closed_port()}")
    assert_clean_failure(result, status=2)
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("model",), "the following arguments are required: ACTION"),
        (("model", "frob"), "invalid choice: 'frob'"),
        (("server",), "the following arguments are required: ACTION"),
        (("server", "frob"), "invalid choice: 'frob'"),
        (("model", "load"), "the following arguments are required: -f/--file"),
        (("model", "unload"), "the following arguments are required: name"),
        (("model", "infer", "iris"), "the following arguments are required: --data"),
        (("model", "status", "iris", "--watch", "--until", "Bogus"), "argument --until: invalid choice: 'Bogus'"),
        (("model", "status", "--scheduler", "nohost"), "expected HOST:PORT"),
        (("model", "status", "--frob"), "unrecognized arguments: --frob"),
    ],
    ids=[
        "model",
        "model-frob",
        "server",
        "server-frob",
        "load-no-file",
        "unload-no-name",
        "infer-no-data",
        "until-bogus",
        "bad-address",
        "unknown-flag",
    ],
)
def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str) -> None:
    result = in_process(capsys, *args)
    assert_clean_failure(result, status=2)
    assert "usage: modelplane" in result.stderr
    assert message in result.stderr


def test_bad_usage_exits_2_from_the_command_too() -> None:
    for args in (("model",), ("model", "frob")):
        result = run_modelplane(*args)
        assert_clean_failure(result, status=2)
        assert "usage: modelplane model" in result.stderr


def test_watch_without_a_name_is_a_usage_error() -> None:
    result = run_modelplane("model", "status", "--watch", "--scheduler", f"127.0.0.1:{closed_port()}")
    assert result.returncode == 2
    assert "--watch needs a model name" in result.stderr
