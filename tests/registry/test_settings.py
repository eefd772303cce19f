"""The registry server's settings come like every process's (modelplane/config.py): flags over
MODELPLANE_REGISTRY_<FLAG> over MODELPLANE_<FLAG> over the [registry] table of a TOML file (--config or
MODELPLANE_CONFIG) over defaults, each value through the flag's own parsing; a bad one stops it with exit 2
naming where it came from. And a live registry configured by its file alone serves from it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from modelplane.addresses import Address
from registry.settings import RegistrySettings, build_parser, parse_settings
from registry.store.database import shown
from tests.support.processes import stop_process
from tests.support.registry_process import start_registry, wait_for_status
from tests.support.training_schemas import write_iris_csv


def _parse(argv: list[str], environ: dict[str, str] | None = None) -> RegistrySettings:
    return parse_settings(build_parser(argparse.ArgumentParser(prog="modelplane registry")), argv, environ or {})


def test_defaults() -> None:
    settings = _parse([])
    assert settings.listen == Address("127.0.0.1", 9010)
    # Made absolute at start: the training runs work in other folders (tests/registry/test_training.py).
    assert settings.state_dir == Path(".modelplane/registry").absolute()
    assert settings.datasets_root == Path(".modelplane/registry/datasets").absolute()
    assert settings.database.database == str(Path(".modelplane/registry/registry.db").absolute())
    assert (settings.split_timeout_seconds, settings.training_timeout_seconds) == (600.0, 3600.0)
    assert (settings.scheduler, settings.deploy_requirements) == (None, ("sklearn",))


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "modelplane.toml"
    config.write_text(
        "[registry]\n"
        'listen = "127.0.0.1:7010"\n'
        'state-dir = "/from/file"\n'
        'datasets_root = "/data/from/file"\n'
        "split-timeout = 30\n"
        "training-timeout = 120\n"
        'scheduler = "127.0.0.1:9004"\n'
        'deploy-requirements = "sklearn, xgboost"\n'
        "log-json = true\n"
        "[scheduler]\n"
        'listen = "127.0.0.1:1"\n'  # another process's table: not the registry's
    )
    from_file = _parse([f"--config={config}"])
    assert from_file.listen == Address("127.0.0.1", 7010)
    assert from_file.state_dir == Path("/from/file")
    assert from_file.datasets_root == Path("/data/from/file")
    assert from_file.database.database == "/from/file/registry.db"  # the default follows the state directory
    assert (from_file.split_timeout_seconds, from_file.training_timeout_seconds) == (30.0, 120.0)
    assert from_file.scheduler == Address("127.0.0.1", 9004)
    assert from_file.deploy_requirements == ("sklearn", "xgboost")
    assert from_file.log_json is True

    environ = {
        "MODELPLANE_CONFIG": str(config),
        "MODELPLANE_LISTEN": "127.0.0.1:8001",  # every process's
        "MODELPLANE_REGISTRY_LISTEN": "127.0.0.1:8010",  # the registry's own: wins
        "MODELPLANE_REGISTRY_SPLIT_TIMEOUT": "45",
        # A password only through the environment, never on the command line; never shown.
        "MODELPLANE_REGISTRY_DATABASE": "postgresql://registry:s3cret@127.0.0.1:5432/registry",
    }
    from_environment = _parse([], environ)
    assert from_environment.listen == Address("127.0.0.1", 8010)
    assert from_environment.split_timeout_seconds == 45.0
    assert from_environment.training_timeout_seconds == 120.0  # still the file's
    assert from_environment.database.drivername == "postgresql+psycopg"
    assert from_environment.database.password == "s3cret"  # noqa: S105 - a made-up test password
    assert "s3cret" not in shown(from_environment.database)

    flags = _parse(["--listen=127.0.0.1:9999", "--split-timeout=5", f"--database=sqlite:///{tmp_path}/r.db"], environ)
    assert flags.listen == Address("127.0.0.1", 9999)
    assert flags.split_timeout_seconds == 5.0
    assert flags.database.database == f"{tmp_path}/r.db"


@pytest.mark.parametrize(
    ("environ", "toml", "named"),
    [
        ({"MODELPLANE_REGISTRY_SPLIT_TIMEOUT": "-1"}, None, "split-timeout"),
        ({"MODELPLANE_REGISTRY_LISTEN": "nowhere"}, None, "expected HOST:PORT"),
        ({"MODELPLANE_REGISTRY_DATABASE": "mysql://db/registry"}, None, "mysql is not supported"),
        ({"MODELPLANE_REGISTRY_LOG_JSON": "maybe"}, None, "MODELPLANE_REGISTRY_LOG_JSON: expected true or false"),
        ({}, "[registry]\nlisten-port = 1\n", "unknown setting 'listen-port'"),
        ({}, '[registry]\ndatabase = "sqlite:///:memory:"\n', "memory would not last"),
        ({}, "[registry]\ntraining-timeout = [1, 2]\n", "expected a single value"),
        ({}, "registry = 1\n", "[registry] must be a table"),
    ],
)
def test_a_bad_setting_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], environ: dict[str, str], toml: str | None, named: str
) -> None:
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        environ = {**environ, "MODELPLANE_CONFIG": str(tmp_path / "c.toml")}
    with pytest.raises(SystemExit) as exited:
        _parse([], environ)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_a_registry_configured_by_its_file_serves_from_it(tmp_path: Path, database_url: str) -> None:
    """The file names the datasets root and (PostgreSQL) the database; the command line only where to listen."""
    datasets = tmp_path / "from-file-datasets"
    datasets.mkdir()
    write_iris_csv(datasets / "iris.csv")
    config = tmp_path / "registry.toml"
    lines = ["[registry]", f'datasets-root = "{datasets}"', "split-timeout = 300"]
    if database_url.startswith("postgresql"):
        lines.append(f'database = "{database_url}"')
    config.write_text("\n".join(lines) + "\n")
    registry = start_registry(tmp_path, f"--config={config}")
    try:
        assert registry.call("PUT", "/experiments/iris", {"srcpath": "iris.csv", "outcome": "species"}).status == 201
        body = {"type": "first", "parameters": {"percent": 80}}
        split_id = registry.call("POST", "/experiments/iris/splits", body).body["id"]
        done = wait_for_status(registry, f"/experiments/iris/splits/{split_id}/status", {"COMPLETE", "FAILED"})
        assert done == {"id": split_id, "status": "COMPLETE"}  # read from the file's datasets root
        [dataset] = registry.call("GET", "/datasets").body
        assert (dataset["srcpath"], dataset["sampleCount"]) == ("iris.csv", 150)
    finally:
        stop_process(registry.process)
