"""The gateway presents its identity to the agents' inference proxies, and agents that check their callers admit
it and refuse everyone else: a real scheduler, an agent with a real MLServer checking inference callers by
TokenReview (the fake Kubernetes API, with the audience only agents accept), and a real gateway presenting a
ServiceAccount token from --agent-token-file, which the kubelet would rotate while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from gateway.edges.v2_grpc_codec import encode_infer_request
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support.auth_material import bearer, write_replacing
from tests.support.cluster_fixtures import Cluster, Iris, api_of, model
from tests.support.fake_kubernetes_api import FakeKubernetesApi
from tests.support.processes import start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

GATEWAY = "system:serviceaccount:modelplane:modelplane-gateway"
AGENT_AUDIENCE = "modelplane-agent"
FIRST, SECOND = "gateway-token-for-agents-first-hour", "gateway-token-for-agents-second-hour"
FOR_THE_SCHEDULER = "gateway-token-for-the-scheduler"


@pytest.fixture
async def api() -> AsyncIterator[FakeKubernetesApi]:
    fake = FakeKubernetesApi()
    for token, audience in ((FIRST, AGENT_AUDIENCE), (SECOND, AGENT_AUDIENCE), (FOR_THE_SCHEDULER, "modelplane")):
        fake.token_reviews[token] = {"authenticated": True, "user": {"username": GATEWAY}}
        fake.token_audiences[token] = [audience]
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.post(url, json=body, headers=headers or {}) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_agents_admit_the_gateway_by_its_token_and_refuse_anonymous_callers(
    cluster: Cluster, iris: Iris, api: FakeKubernetesApi
) -> None:
    policy = cluster.root / "agent-policy.yaml"
    policy.write_text("identities: {}\n")  # inference needs an identity, no role
    checking = (
        "--auth-token-review",
        f"--auth-token-audience={AGENT_AUDIENCE}",
        f"--k8s-api={api.url}",
        f"--auth-policy={policy}",
        "--auth-inference=on",
    )
    scheduler = cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=checking))
    async with api_of(cluster) as scheduler_api:
        await scheduler_api.load(model("iris", str(iris.folder)))
        await scheduler_api.available("iris")
    token_file = cluster.root / "gateway-agent-token"
    token_file.write_text(FIRST + "\n")
    gateway = await asyncio.to_thread(
        start_gateway, cluster.root / "gateway", scheduler.listen, f"--agent-token-file={token_file}"
    )
    anonymous_gateway = await asyncio.to_thread(start_gateway, cluster.root / "anonymous-gateway", scheduler.listen)
    try:
        # The agent's proxy refuses a caller without a token, with a wrong one, or with one for another audience.
        direct = f"{agent.proxy_url}/v2/models/iris/infer"
        status, answer = await post(direct, iris.request)
        assert status == 401, answer
        assert answer["error"].startswith("no credential"), answer
        for token in ("forged", FOR_THE_SCHEDULER):
            status, answer = await post(direct, iris.request, dict(bearer(token)))
            assert (status, answer["error"]) == (401, "the bearer token is not valid"), token
        async with aio.insecure_channel(agent.proxy_grpc) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    encode_infer_request("iris", None, iris.request), timeout=30
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # The gateway presenting its token is admitted; one presenting none is refused by the agent (502 here:
        # the gateway's credential failed, not the caller's request).
        status, answer = await post(f"{gateway.url}/v2/models/iris/infer", iris.request)
        assert (status, answer.get("outputs", [{}])[0].get("data")) == (200, iris.expected), answer
        reviewed = [r.body["spec"] for r in api.requests_for("POST", "/tokenreviews")]
        assert {"token": FIRST, "audiences": [AGENT_AUDIENCE]} in reviewed
        status, answer = await post(f"{anonymous_gateway.url}/v2/models/iris/infer", iris.request)
        assert status == 502, answer
        assert "no credential" in anonymous_gateway.log(), "the agent's reason is in the gateway's log"

        # Rotated by the kubelet: the API server no longer accepts the first token; the gateway sends the second.
        del api.token_reviews[FIRST]
        write_replacing(token_file, SECOND + "\n")
        status, answer = await post(f"{gateway.url}/v2/models/iris/infer", iris.request)
        assert (status, answer.get("outputs", [{}])[0].get("data")) == (200, iris.expected), answer
        reviewed = [r.body["spec"] for r in api.requests_for("POST", "/tokenreviews")]
        assert reviewed[-1] == {"token": SECOND, "audiences": [AGENT_AUDIENCE]}
    finally:
        assert stop_process(anonymous_gateway.process) == 0
        assert stop_process(gateway.process) == 0
