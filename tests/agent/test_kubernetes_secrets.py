"""A Model's storage secret read by the agent from a Kubernetes Secret in its namespace (--k8s-secrets): the
fake Kubernetes API holds the Secrets, a real agent (named by its pod, as in a StatefulSet) with a real MLServer
fetches the model from a real SeaweedFS whose credentials only the Secret has, through a real scheduler."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.artifacts.errors import ArtifactError
from agent.artifacts.kubernetes_secrets import storage_values_from
from generated.mlops.scheduler import scheduler_pb2 as pb
from tests.support.cluster_fixtures import MIB, Cluster, Iris, api_of
from tests.support.fake_kubernetes_api import SECRETS, FakeKubernetesApi
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]

NAMESPACE = "models"
API_TOKEN = "fake-api-token-of-the-agent"  # noqa: S105 -- the fake API's throwaway token


def seldon_style_yaml(s3: S3Server, secret_key: str = SECRET_KEY) -> str:
    """An rclone remote as Seldon's docs describe one: YAML with type, name and parameters."""
    return (
        "type: s3\n"
        "name: s3\n"
        "parameters:\n"
        "  provider: minio\n"
        "  env_auth: false\n"
        f"  access_key_id: {ACCESS_KEY}\n"
        f"  secret_access_key: {secret_key}\n"
        f"  endpoint: {s3.endpoint}\n"
        "  region: us-east-1\n"
    )


def a_secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}, "data": encoded}


def secret_model(name: str, uri: str, secret_name: str) -> pb.Model:
    spec = pb.ModelSpec(uri=uri, requirements=["sklearn"], memoryBytes=10 * MIB)
    spec.storageConfig.CopyFrom(pb.StorageConfig(storageSecretName=secret_name))
    return pb.Model(meta=pb.MetaData(name=name), modelSpec=spec, deploymentSpec=pb.DeploymentSpec(replicas=1))


@pytest.fixture
async def kubernetes() -> AsyncIterator[FakeKubernetesApi]:
    async with FakeKubernetesApi(token=API_TOKEN) as fake:
        yield fake


async def infer(base_url: str, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(f"{base_url}/v2/models/{name}/infer", json=body) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_models_fetch_with_credentials_only_a_kubernetes_secret_holds(
    cluster: Cluster, kubernetes: FakeKubernetesApi, s3_server: S3Server, iris: Iris, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket({"iris/model.joblib": iris.joblib})
    uri = f"s3://{bucket}/iris"
    kubernetes.put(SECRETS, a_secret("seldon-style", {"s3": seldon_style_yaml(s3_server)}))
    aws = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": s3_server.endpoint}
    kubernetes.put(SECRETS, a_secret("aws-style", aws))
    kubernetes.put(SECRETS, a_secret("wrong-key", {"s3": seldon_style_yaml(s3_server, "not-the-secret-key")}))
    kubernetes.put(SECRETS, a_secret("two-keys", {"s3": seldon_style_yaml(s3_server), "gs": "type: gcs"}))
    kubernetes.put(SECRETS, a_secret("half-aws", {"AWS_ACCESS_KEY_ID": ACCESS_KEY}))
    kubernetes.put(SECRETS, a_secret("too-large", {"s3": "#" * (300 * 1024)}))
    kubernetes.put(SECRETS, a_secret("forbidden", {"s3": seldon_style_yaml(s3_server)}))
    kubernetes.inject_error("GET", f"/namespaces/{NAMESPACE}/secrets/forbidden", 403, "Forbidden", times=100)
    token_file = tmp_path / "token"
    token_file.write_text(API_TOKEN + "\n")

    cluster.start_scheduler()
    pod_flags = ("--k8s-secrets", f"--k8s-api={kubernetes.url}", f"--k8s-token-file={token_file}")
    spec = cluster.agent(2, pod_name="iris-servers-2", extra=(*pod_flags, f"--k8s-namespace={NAMESPACE}"))
    [agent] = await asyncio.to_thread(cluster.start_agents, spec)
    async with api_of(cluster) as api:
        for name, secret in (("from-seldon-style", "seldon-style"), ("from-aws-style", "aws-style")):
            await api.load(secret_model(name, uri, secret))
            await api.available(name, replica=2)  # the replica the pod's name says
            status, answer = await infer(agent.proxy_url, name, iris.request)
            assert status == 200, answer
            assert answer["outputs"][0]["data"] == iris.expected
        server = (await api.status("from-seldon-style")).versions[-1].modelReplicaState
        assert list(server) == [2]

        refused = {
            "wrong-key": "SignatureDoesNotMatch",  # S3 refuses the listing
            "no-such-secret": "no such Secret; create it in the namespace the agent runs in",
            "two-keys": "the Secret holds 2 keys (gs, s3); a storage Secret holds one rclone config",
            "half-aws": "AWS_SECRET_ACCESS_KEY is missing or empty",
            "too-large": "the Secret is larger than 256 KiB",
            "forbidden": "needs 'get' on secrets in namespace 'models'",
        }
        for stored, message in refused.items():
            await api.load(secret_model(f"from-{stored}", uri, stored))
            reason = await api.failed(f"from-{stored}")
            assert message in reason, reason
            assert f"storage secret '{stored}' (Kubernetes Secret in namespace 'models')" in reason, reason
            assert SECRET_KEY not in reason
            assert "not-the-secret-key" not in reason
    reads = kubernetes.requests_for("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/seldon-style")
    assert reads, "the agent read the Secret from the API"
    assert SECRET_KEY not in agent.log()
    assert SECRET_KEY not in (cluster.scheduler.log() if cluster.scheduler else "")


def test_the_rclone_shape_takes_yaml_json_and_ini_under_any_one_key() -> None:
    expected = {"access_key_id": "AK", "secret_access_key": "SK", "endpoint": "http://s3:9000", "type": "s3"}
    yaml_text = "type: s3\nparameters:\n  access_key_id: AK\n  secret_access_key: SK\n  endpoint: http://s3:9000\n"
    json_text = json.dumps(
        {"type": "s3", "access_key_id": "AK", "secret_access_key": "SK", "endpoint": "http://s3:9000"}
    )
    ini_text = (
        "# a comment\n[remote]\ntype = s3\naccess_key_id = AK\nsecret_access_key = SK\nendpoint = http://s3:9000\n"
    )
    for key, text in (("s3", yaml_text), ("config.json", json_text), ("rclone.conf", ini_text)):
        values = storage_values_from({key: text}, "here")
        assert {k: values[k] for k in expected} == expected


def test_the_aws_shape_maps_to_s3_keys_and_refuses_strangers() -> None:
    values = storage_values_from(
        {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_REGION": "eu-west-1", "S3_ENDPOINT": "x:1"},
        "here",
    )
    assert values == {
        "type": "s3",
        "access_key_id": "AK",
        "secret_access_key": "SK",
        "region": "eu-west-1",
        "endpoint": "x:1",
    }
    with pytest.raises(ArtifactError, match="it also has AWS_SECERT"):
        storage_values_from({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SECERT": "x"}, "here")
    with pytest.raises(ArtifactError, match="holds no data"):
        storage_values_from({}, "here")
    with pytest.raises(ArtifactError, match=r"neither JSON, INI nor YAML \(.* at line 2\)"):
        storage_values_from({"s3": "type: s3\n  bad: [SECRETVALUE\n"}, "here")


def test_an_rclone_yaml_whose_aliases_explode_is_an_artifact_error() -> None:
    lines = ['a0: &a0 "lol"'] + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    with pytest.raises(ArtifactError, match="aliases expand"):
        storage_values_from({"s3": "type: s3\n" + "\n".join(lines) + "\n"}, "here")


@given(st.dictionaries(st.text(max_size=30), st.text(max_size=200), max_size=4))
def test_any_secret_data_gives_s3_keys_or_an_artifact_error_that_quotes_no_value(data: dict[str, str]) -> None:
    try:
        values = storage_values_from(data, "origin")
    except ArtifactError as error:
        for value in data.values():
            if len(value) >= 8:
                assert value not in str(error)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
