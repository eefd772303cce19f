"""The pure builders of controller/servers: a Server and its ServerConfig -> the StatefulSet and headless Service
that run it. Every Server field is used; each test names the rule it checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.servers.agent_container import AgentDefaults
from controller.servers.errors import ServerSpecError
from controller.servers.pod_merge import merge_pod_spec
from controller.servers.server_objects import build_server_objects, desired_replicas, replica_bounds
from tests.controller.server_manifests import (
    a_server,
    every_field_server,
    server_config_with_agent,
    server_config_without_agent,
)

DEFAULTS = AgentDefaults(image="registry.example/modelplane:9", scheduler="sched.ns:9005", extra_args=("--insecure",))


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def flag_values(args: list[str], flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")] + [
        args[i + 1] for i, a in enumerate(args[:-1]) if a == flag
    ]


def test_every_server_field_shapes_the_stateful_set() -> None:
    built = build_server_objects(every_field_server(), server_config_with_agent(), DEFAULTS)
    sts = built.stateful_set
    pod = sts["spec"]["template"]["spec"]
    by_name = containers(pod)

    # replicas 5 within min 1 / max 3
    assert built.replicas == 3
    assert sts["spec"]["replicas"] == 3
    # names, namespace, labels, selector, owner
    assert sts["metadata"]["name"] == "iris-servers"
    assert sts["metadata"]["namespace"] == "models"
    assert sts["spec"]["serviceName"] == "iris-servers"
    selector = sts["spec"]["selector"]["matchLabels"]
    assert selector.items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "mlops.seldon.io/v1alpha1",
            "kind": "Server",
            "name": "iris-servers",
            "uid": "uid-iris-servers",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    # podSpec merged over the ServerConfig's: maps merge, containers by name, env by name, unknown fields kept
    assert pod["nodeSelector"] == {"pool": "inference"}
    assert pod["terminationGracePeriodSeconds"] == 90
    assert pod["futureField"] == {"kept": True}
    mlserver = by_name["mlserver"]
    assert mlserver["image"] == "seldonio/mlserver:1.7.1-slim"
    assert mlserver["command"] == ["mlserver", "start", "/mnt/models/repository"]
    assert env_of(mlserver) == {"MLSERVER_HTTP_PORT": "8080", "MLSERVER_DEBUG": "true"}
    assert mlserver["resources"] == {"requests": {"memory": "1Gi"}, "limits": {"memory": "4Gi"}}
    assert [v["name"] for v in pod["volumes"]] == ["models", "extra"]
    # imageOverrides: the agent's image; rclone is accepted and ignored (no rclone container runs)
    assert set(by_name) == {"mlserver", "agent"}
    agent = by_name["agent"]
    assert agent["image"] == "modelplane:2.0"
    # the agent: ServerConfig's flags kept, the per-Server and per-pod ones set once by the controller
    args = agent["args"]
    assert args[0] == "agent"
    assert flag_values(args, "--scheduler") == ["modelplane-scheduler:9005"]
    assert flag_values(args, "--server-url") == ["http://127.0.0.1:8080"]
    assert flag_values(args, "--models-dir") == ["/mnt/models/repository"]
    assert flag_values(args, "--server-name") == ["iris-servers"]
    assert flag_values(args, "--replica-idx") == []
    assert flag_values(args, "--pod-name") == ["$(POD_NAME)"]
    assert flag_values(args, "--k8s-namespace") == ["$(POD_NAMESPACE)"]
    assert "--k8s-secrets" in args
    assert "--k8s-in-cluster" in args
    # extraCapabilities add to the kind's defaults (the ServerConfig's agent names none), once each
    assert flag_values(args, "--capabilities") == ["sklearn,mlserver,gpu"]
    # the proxy: the ServerConfig's port kept, the other listening beyond the pod
    assert flag_values(args, "--proxy-http") == ["0.0.0.0:9101"]
    assert flag_values(args, "--proxy-grpc") == ["0.0.0.0:9500"]
    env = env_of(agent)
    assert [e["name"] for e in agent["env"]][:2] == ["POD_NAME", "POD_NAMESPACE"], "defined before use"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MODELPLANE_AGENT_ADVERTISE_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MODELPLANE_INSECURE"] == "true"
    assert pod["serviceAccountName"] == "modelplane-agent"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    assert "volumeClaimTemplates" not in sts["spec"]

    service = built.service
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == "iris-servers"
    assert service["spec"]["selector"] == selector
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("proxy-http", 9101), ("proxy-grpc", 9500)]
    assert service["metadata"]["ownerReferences"] == sts["metadata"]["ownerReferences"]


def test_capabilities_replace_the_server_configs() -> None:
    config = server_config_with_agent()
    config["spec"]["podSpec"]["containers"][1]["args"].append("--capabilities=sklearn,xgboost")
    built = build_server_objects(a_server(capabilities=["huggingface", "llm"]), config, DEFAULTS)
    args = containers(built.stateful_set["spec"]["template"]["spec"])["agent"]["args"]
    assert flag_values(args, "--capabilities") == ["huggingface,llm"]

    extra = build_server_objects(a_server(extraCapabilities=["gpu"]), config, DEFAULTS)
    args = containers(extra.stateful_set["spec"]["template"]["spec"])["agent"]["args"]
    assert flag_values(args, "--capabilities") == ["sklearn,xgboost,gpu"], "added to the ServerConfig's own"

    plain = build_server_objects(a_server(), config, DEFAULTS)
    args = containers(plain.stateful_set["spec"]["template"]["spec"])["agent"]["args"]
    assert flag_values(args, "--capabilities") == ["sklearn,xgboost"], "left as the ServerConfig says"


def test_a_server_config_without_an_agent_gets_one_made_for_its_server() -> None:
    server = a_server("tritons", config="triton-pvc", replicas=2)
    built = build_server_objects(server, server_config_without_agent(), DEFAULTS)
    sts = built.stateful_set
    pod = sts["spec"]["template"]["spec"]
    agent = containers(pod)["agent"]
    assert agent["image"] == DEFAULTS.image
    args = agent["args"]
    assert flag_values(args, "--scheduler") == ["sched.ns:9005"]
    assert flag_values(args, "--server-kind") == ["triton"]
    assert flag_values(args, "--server-url") == ["http://127.0.0.1:8010"]
    assert flag_values(args, "--server-grpc") == ["127.0.0.1:8011"]
    assert flag_values(args, "--models-dir") == ["/mnt/repo"]
    assert "--insecure" in args
    assert {"name": "triton-models", "mountPath": "/mnt/repo"} in agent["volumeMounts"]
    assert env_of(agent)["MODELPLANE_AGENT_MEMORY"] == {
        "resourceFieldRef": {"containerName": "triton", "resource": "requests.memory"}
    }
    # the claim template replaces the pod volume of its name: one claim per pod
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["triton-models"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {"requests": {"storage": "5Gi"}}
    assert "triton-models" not in [v["name"] for v in pod["volumes"]]
    assert "agent-work" in [v["name"] for v in pod["volumes"]]
    assert built.replicas == 2


@pytest.mark.parametrize(
    ("server", "config", "message"),
    [
        (a_server("Bad_Name"), server_config_with_agent(), "server name"),
        (a_server("x" * 53), server_config_with_agent(), "52"),
        (a_server(minReplicas=4, maxReplicas=2), server_config_with_agent(), r"minReplicas \(4\) is more than"),
        (a_server(replicas=-1), server_config_with_agent(), "spec.replicas"),
        (a_server(replicas="3"), server_config_with_agent(), "spec.replicas"),
        (a_server(imageOverrides={"agnet": {"image": "x"}}), server_config_with_agent(), "no container 'agnet'"),
        (a_server(config="other"), server_config_with_agent(), "spec.serverConfig"),
        (a_server(capabilities="sklearn"), server_config_with_agent(), "spec.capabilities"),
        (a_server(capabilities=["a,b"]), server_config_with_agent(), "comma"),
        (a_server(podSpec={"containers": [{"image": "no-name"}]}), server_config_with_agent(), "'name'"),
    ],
)
def test_a_server_that_cannot_run_says_why(server: dict[str, Any], config: dict[str, Any], message: str) -> None:
    with pytest.raises(ServerSpecError, match=message):
        build_server_objects(server, config, DEFAULTS)


def test_a_server_config_whose_server_does_not_mount_the_models_volume_says_so() -> None:
    config = server_config_without_agent()
    config["spec"]["podSpec"]["containers"][0]["volumeMounts"] = []
    with pytest.raises(ServerSpecError, match="does not mount the models volume 'triton-models'"):
        build_server_objects(a_server(config="triton-pvc"), config, DEFAULTS)


def test_replicas_default_to_one_and_stay_within_bounds() -> None:
    assert desired_replicas(a_server()) == 1
    assert desired_replicas(a_server(minReplicas=2)) == 2
    assert desired_replicas(a_server(replicas=0)) == 0
    assert desired_replicas(a_server(replicas=9, maxReplicas=4)) == 4
    assert replica_bounds(a_server(minReplicas=1, maxReplicas=3)).clamp(7) == 3


@given(
    replicas=st.one_of(st.none(), st.integers(-5, 20_000)),
    minimum=st.one_of(st.none(), st.integers(-5, 20_000)),
    maximum=st.one_of(st.none(), st.integers(-5, 20_000)),
)
def test_any_replica_numbers_give_a_count_within_bounds_or_a_clear_error(
    replicas: int | None, minimum: int | None, maximum: int | None
) -> None:
    given_counts = {"replicas": replicas, "minReplicas": minimum, "maxReplicas": maximum}
    spec: dict[str, Any] = {field: count for field, count in given_counts.items() if count is not None}
    try:
        built = build_server_objects(a_server(**spec), server_config_with_agent(), DEFAULTS)
    except ServerSpecError as error:
        assert "Replicas" in str(error) or "replicas" in str(error)
        return
    assert 0 <= built.replicas <= 10_000
    if minimum is not None:
        assert built.replicas >= minimum
    if maximum is not None:
        assert built.replicas <= maximum


def test_the_merge_changes_neither_input_and_null_removes() -> None:
    base: dict[str, Any] = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}], "hostNetwork": True}
    over = {"containers": [{"name": "a", "env": [{"name": "X", "value": "2"}]}], "hostNetwork": None}
    merged = merge_pod_spec(base, over)
    assert merged == {"containers": [{"name": "a", "env": [{"name": "X", "value": "2"}]}]}
    assert base["hostNetwork"] is True
    assert base["containers"][0]["env"][0]["value"] == "1"
