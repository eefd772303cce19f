"""Server and ServerConfig resources for the controller's tests, written for modelplane from Seldon's field lists
(never copied from Seldon's files): one ServerConfig with its agent container (as deploy/ ships them) and one
without (the controller makes the agent), and a Server that uses every field."""

from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]
GROUP_VERSION = "mlops.seldon.io/v1alpha1"


def server_config_with_agent(name: str = "mlserver") -> JsonObject:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ServerConfig",
        "metadata": {"name": name, "namespace": "models", "uid": "sc-uid-1"},
        "spec": {
            "podSpec": {
                "terminationGracePeriodSeconds": 90,
                "containers": [
                    {
                        "name": "mlserver",
                        "image": "seldonio/mlserver:1.7.1",
                        "command": ["mlserver", "start", "/mnt/models/repository"],
                        "env": [{"name": "MLSERVER_HTTP_PORT", "value": "8080"}],
                        "ports": [{"name": "server-http", "containerPort": 8080}],
                        "resources": {"requests": {"memory": "1Gi"}},
                        "volumeMounts": [{"name": "models", "mountPath": "/mnt/models", "readOnly": True}],
                    },
                    {
                        "name": "agent",
                        "image": "modelplane:1.0",
                        "args": [
                            "agent",
                            "--scheduler=modelplane-scheduler:9005",
                            "--server-kind=mlserver",
                            "--server-url=http://127.0.0.1:8080",
                            "--models-dir=/mnt/models/repository",
                            "--proxy-http=0.0.0.0:9101",
                            "--server-name=stale",
                            "--replica-idx",
                            "7",
                        ],
                        "env": [
                            {"name": "MODELPLANE_INSECURE", "value": "true"},
                            {"name": "POD_NAME", "value": "wrong"},
                        ],
                        "volumeMounts": [{"name": "models", "mountPath": "/mnt/models"}],
                    },
                ],
                "volumes": [{"name": "models", "emptyDir": {}}],
                "futureField": {"kept": True},
            }
        },
    }


def server_config_without_agent(name: str = "triton-pvc") -> JsonObject:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ServerConfig",
        "metadata": {"name": name, "namespace": "models", "uid": "sc-uid-2"},
        "spec": {
            "podSpec": {
                "containers": [
                    {
                        "name": "triton",
                        "image": "nvcr.io/nvidia/tritonserver:24.10-py3",
                        "command": ["tritonserver", "--model-repository=/mnt/repo", "--model-control-mode=explicit"],
                        "ports": [{"name": "http", "containerPort": 8010}, {"name": "grpc", "containerPort": 8011}],
                        "resources": {"requests": {"memory": "2Gi"}},
                        "volumeMounts": [{"name": "triton-models", "mountPath": "/mnt/repo"}],
                    }
                ],
                "volumes": [{"name": "triton-models", "emptyDir": {}}],
            },
            "volumeClaimTemplates": [
                {
                    "name": "triton-models",
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
                }
            ],
        },
    }


def a_server(name: str = "iris-servers", config: str = "mlserver", **spec: Any) -> JsonObject:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Server",
        "metadata": {"name": name, "namespace": "models", "uid": f"uid-{name}", "generation": 1},
        "spec": {"serverConfig": config, **spec},
    }


def every_field_server() -> JsonObject:
    """A Server using every field of Seldon's Server.spec (capabilities aside: it replaces extraCapabilities')."""
    return a_server(
        extraCapabilities=["gpu", "sklearn"],
        imageOverrides={"agent": {"image": "modelplane:2.0"}, "rclone": {"image": "rclone:ignored"}},
        podSpec={
            "nodeSelector": {"pool": "inference"},
            "containers": [
                {
                    "name": "mlserver",
                    "image": "seldonio/mlserver:1.7.1-slim",
                    "env": [{"name": "MLSERVER_DEBUG", "value": "true"}],
                    "resources": {"limits": {"memory": "4Gi"}},
                }
            ],
            "volumes": [{"name": "extra", "emptyDir": {"medium": "Memory"}}],
        },
        replicas=5,
        minReplicas=1,
        maxReplicas=3,
        statefulSetPersistentVolumeClaimRetentionPolicy={"whenDeleted": "Delete", "whenScaled": "Retain"},
        somethingNew={"kept": "in the resource"},
    )
