"""gateway.edges.grpc_edge over real grpc.aio on a loopback port, with the real InferenceRouter and routing table;
only the pipeline runner is a fake (it records what it was given)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc
import pytest
from grpc import aio

from gateway.edges.grpc_edge import v2_grpc_service
from gateway.edges.v2_grpc_codec import decode_infer_response, encode_infer_request
from gateway.edges.v2_grpc_service import add_v2_inference_service
from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_router import InferenceRouter
from gateway.inference_types import InferenceError, JsonObject
from gateway.replica_client import ReplicaClient
from gateway.routing_table import ROUTE_HEADER, PipelineRoute, RoutingTable
from generated.inference.v2 import grpc_predict_v2_pb2 as v2_pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity, bind, new_server
from tests.support.metrics_reading import registry_sum

REQUEST: JsonObject = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}


@dataclass
class FakePipelines:
    calls: list[tuple[str, JsonObject, dict[str, str]]] = field(default_factory=list)

    async def run(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        self.calls.append((name, request, dict(headers)))
        tensor = request["inputs"][0]
        return {"model_name": name, "outputs": [{**tensor, "name": "y", "data": [2 * v for v in tensor["data"]]}]}


@dataclass
class Edge:
    pipelines: FakePipelines
    metrics: GatewayMetrics
    stub: v2_grpc.GRPCInferenceServiceAsyncStub


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    table = RoutingTable()
    for name in ("p1", "p2"):
        table.pipelines[name] = PipelineRoute(name, 1, f"uid-{name}", pb.Pipeline(name=name))
    table.experiments["exp"] = pb.Experiment(
        name="exp",
        candidates=[pb.ExperimentCandidate(name="p2", weight=1)],
        resourceType=pb.PIPELINE,
        config=pb.ExperimentConfig(stickySessions=True),
    )
    metrics, client = GatewayMetrics(), ReplicaClient()
    router = InferenceRouter(lambda: table, client, metrics)
    pipelines = FakePipelines()
    router.pipelines = pipelines
    server = new_server()
    add_v2_inference_service(server, v2_grpc_service(router, lambda: True))
    port = bind(server, Address("127.0.0.1", 0), TransportSecurity(insecure=True))
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Edge(pipelines, metrics, v2_grpc.GRPCInferenceServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)
        await router.close()
        await client.close()


async def test_a_pipeline_name_runs_the_pipeline_with_the_request_as_sent(edge: Edge) -> None:
    reply = await edge.stub.ModelInfer(encode_infer_request("p1", None, REQUEST), metadata=(("x-request-id", "r1"),))
    outputs = decode_infer_response(reply)["outputs"]
    assert [(t["name"], t["data"]) for t in outputs] == [("y", [2, 4])]
    [(name, request, headers)] = edge.pipelines.calls
    assert name == "p1"
    assert request["inputs"] == REQUEST["inputs"]  # name, shape, datatype and data as sent
    assert headers["x-request-id"] == "r1"
    counted = registry_sum(edge.metrics.registry, "modelplane_gateway_requests_total", kind="pipeline", name="p1")
    assert counted == 1


async def test_a_pipeline_experiment_routes_and_names_its_candidate_in_metadata(edge: Edge) -> None:
    call = edge.stub.ModelInfer(encode_infer_request("exp", None, REQUEST))
    reply = await call
    assert decode_infer_response(reply)["outputs"][0]["data"] == [2, 4]
    assert [name for name, _, _ in edge.pipelines.calls] == ["p2"]
    assert dict(await call.initial_metadata()).get(ROUTE_HEADER) == "p2"
    counted = registry_sum(edge.metrics.registry, "modelplane_gateway_requests_total", kind="pipeline", name="exp")
    assert counted == 1
    assert registry_sum(edge.metrics.registry, "modelplane_gateway_requests_total", route="p2") == 1


async def test_an_unknown_name_is_not_found_and_runs_nothing(edge: Edge) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await edge.stub.ModelInfer(encode_infer_request("nosuch", None, REQUEST))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nosuch" in (raised.value.details() or "")
    assert edge.pipelines.calls == []


async def test_readiness_of_a_pipeline_and_of_an_experiment_over_pipelines_by_its_own_name(edge: Edge) -> None:
    for name in ("p1", "exp"):
        reply = await edge.stub.ModelReady(v2_pb.ModelReadyRequest(name=name))
        assert reply.ready, name
    # An unknown name is not ready: gRPC's ModelReady answers a boolean (REST answers 404, its "false").
    assert not (await edge.stub.ModelReady(v2_pb.ModelReadyRequest(name="nosuch"))).ready


async def test_a_model_request_from_kafka_or_a_pipeline_is_checked_like_any_other() -> None:
    table = RoutingTable()
    metrics, client = GatewayMetrics(), ReplicaClient()
    router = InferenceRouter(lambda: table, client, metrics)
    try:
        malformed: list[JsonObject] = [
            {},
            {"inputs": []},
            {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]},
        ]
        for request in malformed:
            with pytest.raises(InferenceError) as raised:
                await router.call_model("m", request, {})
            assert raised.value.status == 400, request
    finally:
        await router.close()
        await client.close()
