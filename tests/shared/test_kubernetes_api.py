"""modelplane/kubernetes_api.py: the ``--k8s-*`` flags become a client that reaches the API server they name, with
the token from its file (against the fake API, which refuses requests without that token)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from modelplane.kubernetes_api import (
    KubernetesConfigError,
    KubernetesConnection,
    add_kubernetes_flags,
    connection_from_flags,
    kubernetes_client,
)
from tests.support.fake_kubernetes_api import FakeKubernetesApi

TOKEN = "a-made-up-service-account-token"  # noqa: S105 - the fake's own


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_kubernetes_flags(parser)
    return parser.parse_args(argv)


async def test_the_flags_reach_the_api_server_with_the_token_from_its_file(tmp_path: Path) -> None:
    api = FakeKubernetesApi(token=TOKEN)
    await api.start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        connection = connection_from_flags(parse(["--k8s-api", api.url, "--k8s-token-file", str(token_file)]))
        assert TOKEN not in repr(connection)
        async with kubernetes_client(connection) as client:
            leases = await k8s.CoordinationV1Api(client).list_namespaced_lease("default")
        assert leases.items == []

        async with kubernetes_client(KubernetesConnection(host=api.url)) as anonymous:
            with pytest.raises(ApiException) as refused:
                await k8s.CoordinationV1Api(anonymous).list_namespaced_lease("default")
        assert refused.value.status == 401
    finally:
        await api.stop()


async def test_a_rotated_token_file_is_presented_without_a_restart(tmp_path: Path) -> None:
    """A projected ServiceAccount token is replaced about hourly and the old one stops being accepted: a client that
    lives for days (the controller's watch, the scheduler's lease) presents the file's new token."""
    api = FakeKubernetesApi(token=TOKEN)
    await api.start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        connection = connection_from_flags(parse(["--k8s-api", api.url, "--k8s-token-file", str(token_file)]))
        async with kubernetes_client(connection) as client:
            leases = k8s.CoordinationV1Api(client)
            assert (await leases.list_namespaced_lease("default")).items == []
            rotated = "a-made-up-rotated-token"
            replacement = tmp_path / "token.new"
            replacement.write_text(rotated + "\n")
            replacement.replace(token_file)  # as the kubelet swaps it: atomically
            api.token = rotated  # the API server no longer accepts the old one
            assert (await leases.list_namespaced_lease("default")).items == []
    finally:
        await api.stop()


async def test_no_configuration_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-kubeconfig"
    with pytest.raises(KubernetesConfigError, match="no Kubernetes configuration"):
        async with kubernetes_client(connection_from_flags(parse(["--k8s-kubeconfig", str(missing)]))):
            pass
