"""The controller's flags for Server pods (controller/agent_flags.py): what each changes in the StatefulSet the
controller builds, the same values through the environment, and a clear refusal of every bad value."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from controller.servers.server_objects import build_server_objects
from controller.settings import ControllerSettings, build_parser, parse_settings
from tests.controller.server_manifests import a_server, server_config_with_agent, server_config_without_agent

BASE = ["--k8s-api=http://127.0.0.1:1", "--insecure"]


def parse(*argv: str, environ: dict[str, str] | None = None) -> ControllerSettings:
    return parse_settings(build_parser(argparse.ArgumentParser(prog="modelplane controller")), [*BASE, *argv], environ)


def made_pod(settings: ControllerSettings) -> dict[str, Any]:
    built = build_server_objects(a_server(config="triton-pvc"), server_config_without_agent(), settings.agent)
    pod: dict[str, Any] = built.stateful_set["spec"]["template"]["spec"]
    return pod


def agent_of(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == "agent")


def test_the_defaults_are_the_deploy_folders_names() -> None:
    settings = parse(environ={})
    assert settings.scale_down_drain_timeout_seconds == 600
    pod = made_pod(settings)
    agent = agent_of(pod)
    assert agent["image"] == "modelplane"
    assert "--scheduler=modelplane-scheduler:9005" in agent["args"]
    assert pod["serviceAccountName"] == "modelplane-agent"


def test_each_flag_reaches_the_pods_the_controller_builds() -> None:
    settings = parse(
        "--agent-image=registry.example/modelplane:1.2",
        "--agent-scheduler=sched.modelplane.svc:7005",
        "--agent-service-account=agents.team-a",
        "--agent-args=--tls-ca=/etc/tls/ca.crt '--log-level=debug'",
        "--agent-env=MODELPLANE_INSECURE=false NOTE='two words'",
        "--scale-down-drain-timeout=45",
        environ={},
    )
    assert settings.scale_down_drain_timeout_seconds == 45
    pod = made_pod(settings)
    agent = agent_of(pod)
    assert agent["image"] == "registry.example/modelplane:1.2"
    assert "--scheduler=sched.modelplane.svc:7005" in agent["args"]
    assert {"--tls-ca=/etc/tls/ca.crt", "--log-level=debug"} <= set(agent["args"])
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["MODELPLANE_INSECURE"] == "false"
    assert env["NOTE"] == "two words"
    assert pod["serviceAccountName"] == "agents.team-a"


def test_a_server_config_agent_keeps_its_own_image_and_scheduler_and_gets_ours_where_it_names_none() -> None:
    settings = parse("--agent-image=mine:1", "--agent-scheduler=sched:7005", environ={})
    config = server_config_with_agent()
    built = build_server_objects(a_server(), config, settings.agent)
    agent = agent_of(built.stateful_set["spec"]["template"]["spec"])
    assert agent["image"] == "modelplane:1.0"
    assert [a for a in agent["args"] if a.startswith("--scheduler")] == ["--scheduler=modelplane-scheduler:9005"]

    bare = server_config_with_agent()
    bare_agent = bare["spec"]["podSpec"]["containers"][1]
    del bare_agent["image"]
    bare_agent["args"] = [a for a in bare_agent["args"] if not a.startswith("--scheduler")]
    built = build_server_objects(a_server(), bare, settings.agent)
    agent = agent_of(built.stateful_set["spec"]["template"]["spec"])
    assert agent["image"] == "mine:1"
    assert [a for a in agent["args"] if a.startswith("--scheduler")] == ["--scheduler=sched:7005"]


def test_the_environment_and_a_config_file_give_the_same_values(tmp_path: Any) -> None:
    environ = {
        "MODELPLANE_CONTROLLER_AGENT_IMAGE": "env:2",
        "MODELPLANE_CONTROLLER_AGENT_ARGS": "--log-json",
        "MODELPLANE_CONTROLLER_SCALE_DOWN_DRAIN_TIMEOUT": "30",
    }
    settings = parse(environ=environ)
    assert (settings.agent.image, settings.agent.extra_args) == ("env:2", ("--log-json",))
    assert settings.scale_down_drain_timeout_seconds == 30
    config = tmp_path / "modelplane.toml"
    config.write_text('[controller]\nagent-env = "A=1 B=2"\nagent-service-account = "sa"\n')
    settings = parse(f"--config={config}", environ={})
    assert settings.agent.extra_env == (("A", "1"), ("B", "2"))
    assert settings.agent.service_account == "sa"


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--agent-image=", "is not an image reference"),
        ("--agent-image=two words", "is not an image reference"),
        ("--agent-image=" + "x" * 600, "is not an image reference"),
        ("--agent-scheduler=no-port", "no-port"),
        ("--agent-scheduler=host:0", "host:0"),
        ("--agent-service-account=Upper", "is not a ServiceAccount name"),
        ("--agent-service-account=" + "a" * 254, "is not a ServiceAccount name"),
        ("--agent-args=--log-level debug", "'debug' is not --flag or --flag=value"),
        ("--agent-args=--pod-name=x", "--pod-name is set by the controller"),
        ("--agent-args=--scheduler=elsewhere:1", "--scheduler is set by the controller"),
        ("--agent-args=--k8s-in-cluster", "--k8s-in-cluster is set by the controller"),
        ("--agent-args='--unclosed", "cannot split"),
        ("--agent-args=" + " ".join(["--x"] * 65), "65 words; at most 64"),
        ("--agent-args=--x=" + "y" * 1100, "longer than 1024"),
        ("--agent-env=NOVALUE", "'NOVALUE' is not NAME=VALUE"),
        ("--agent-env=1X=2", "is not NAME=VALUE"),
        ("--agent-env=A=1 A=2", "A is given twice"),
        ("--scale-down-drain-timeout=0", "out of range"),
        ("--scale-down-drain-timeout=86401", "out of range"),
        ("--scale-down-drain-timeout=soon", "is not a number of seconds"),
    ],
)
def test_a_bad_value_stops_the_controller_with_a_clear_error(
    flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse(flag, environ={})
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert len(error.strip().splitlines()[-1]) < 400, "one line, bounded"
