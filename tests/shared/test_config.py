"""Settings come from flags over MODELPLANE_* environment variables over a TOML file over defaults."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelplane.addresses import Address
from modelplane.config import LayeredAppend, parse_layered
from scheduler.settings import SchedulerSettings, build_parser, parse_settings


def _parse(argv: list[str], environ: dict[str, str] | None = None) -> SchedulerSettings:
    return parse_settings(build_parser(argparse.ArgumentParser(prog="modelplane scheduler")), argv, environ or {})


def test_defaults() -> None:
    settings = _parse([])
    assert settings.listen == Address("127.0.0.1", 9004)
    assert settings.agent_listen == Address("127.0.0.1", 9005)
    assert settings.state_dir == Path(".modelplane/state")
    assert settings.log_json is False


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "modelplane.toml"
    config.write_text(
        "[scheduler]\n"
        'listen = "127.0.0.1:7001"\n'
        'agent-listen = "127.0.0.1:7002"\n'
        'state_dir = "/from/file"\n'
        "log-json = true\n"
    )
    environ = {
        "MODELPLANE_CONFIG": str(config),
        "MODELPLANE_LISTEN": "127.0.0.1:8001",
        "MODELPLANE_SHUTDOWN_GRACE": "3",
    }
    settings = _parse(["--listen=127.0.0.1:9001"], environ)
    assert settings.listen == Address("127.0.0.1", 9001)  # flag
    assert settings.shutdown_grace_seconds == 3.0  # environment
    assert settings.agent_listen == Address("127.0.0.1", 7002)  # file
    assert settings.state_dir == Path("/from/file")  # file, underscore spelling
    assert settings.log_json is True  # file, boolean
    assert _parse([], environ).listen == Address("127.0.0.1", 8001)


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_boolean_from_env(value: str) -> None:
    assert _parse([], {"MODELPLANE_LOG_JSON": value}).log_json is True


@pytest.mark.parametrize(
    ("environ", "files", "message"),
    [
        ({"MODELPLANE_LOG_JSON": "maybe"}, {}, "MODELPLANE_LOG_JSON: expected true or false"),
        ({"MODELPLANE_LISTEN": "nowhere"}, {}, "expected HOST:PORT"),
        ({}, {"c.toml": "[scheduler]\nlisten-port = 1\n"}, "unknown setting 'listen-port'"),
        ({}, {"c.toml": "[scheduler\n"}, "is not valid TOML"),
        ({}, {"c.toml": "scheduler = 1\n"}, "[scheduler] must be a table"),
        ({}, {"c.toml": "[scheduler]\nlisten = [1, 2]\n"}, "expected a single value"),
        ({}, {}, "does not exist"),
    ],
)
def test_bad_configuration_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], environ: dict[str, str], files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    environ = {**environ, "MODELPLANE_CONFIG": str(tmp_path / "c.toml")} if files or not environ else environ
    with pytest.raises(SystemExit) as exited:
        _parse([], environ)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@given(st.text(max_size=200))
def test_any_toml_text_is_accepted_or_a_usage_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "c.toml"
        config.write_text(text)
        try:
            _parse([], {"MODELPLANE_CONFIG": str(config)})
        except SystemExit as exited:
            assert exited.code == 2


def test_command_specific_environment_wins() -> None:
    environ = {"MODELPLANE_LISTEN": "127.0.0.1:8001", "MODELPLANE_SCHEDULER_LISTEN": "127.0.0.1:8002"}
    assert _parse([], environ).listen == Address("127.0.0.1", 8002)


def repeated_flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelplane controller")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--namespace", action=LayeredAppend, type=str.upper, default=None)
    return parser


@pytest.mark.parametrize(
    ("argv", "environ", "toml", "expected"),
    [
        ([], {}, "", None),
        ([], {"MODELPLANE_NAMESPACE": "team-a"}, "", ["TEAM-A"]),
        ([], {"MODELPLANE_CONTROLLER_NAMESPACE": "team-a, team-b"}, "", ["TEAM-A", "TEAM-B"]),
        ([], {}, '[controller]\nnamespace = ["a", "b"]\n', ["A", "B"]),
        ([], {}, '[controller]\nnamespace = "a"\n', ["A"]),
        (["--namespace", "x"], {"MODELPLANE_NAMESPACE": "team-a"}, "", ["X"]),
        (["--namespace", "x", "--namespace", "y"], {}, '[controller]\nnamespace = ["a"]\n', ["X", "Y"]),
    ],
)
def test_a_repeatable_flag_takes_lists_from_the_environment_and_the_file_and_the_command_line_replaces_them(
    argv: list[str], environ: dict[str, str], toml: str, expected: list[str] | None, tmp_path: Path
) -> None:
    """A repeatable flag (action append) layered like every other: the command line wins over the environment (a
    comma-separated list) and the file (a TOML list or one value). Before, an environment value was taken as
    the list of its characters, and a flag given as well crashed argparse (str has no append)."""
    config = tmp_path / "modelplane.toml"
    config.write_text(toml)
    options = parse_layered(repeated_flag_parser(), "controller", ["--config", str(config), *argv], environ)
    assert options.namespace == expected


def test_a_repeatable_flag_checks_each_value_from_the_environment() -> None:
    parser = argparse.ArgumentParser(prog="modelplane controller")
    parser.add_argument("--replicas", action=LayeredAppend, type=int)
    with pytest.raises(SystemExit) as usage:
        parse_layered(parser, "controller", [], {"MODELPLANE_REPLICAS": "1,two"})
    assert usage.value.code == 2
