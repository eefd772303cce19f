"""A client generated from nothing but proto/ talks to a running `modelplane scheduler` over real gRPC.

The client runs in its own interpreter with freshly compiled modules (``mlops.scheduler...``), not
modelplane's ``generated`` package: it is what any team generating code from the protos would have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from grpc_tools import protoc

from modelplane import __version__
from tests.support.processes import SchedulerProcess

REPO = Path(__file__).resolve().parents[2]

CLIENT = r"""
import faulthandler, json, os, sys
faulthandler.dump_traceback_later(40, exit=True)  # a hang prints where it is stuck instead of nothing
sys.path.insert(0, sys.argv[1])
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from google.protobuf import descriptor_pb2
from mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from mlops.agent.v1 import agent_pb2, agent_pb2_grpc

api, agents = sys.argv[2], sys.argv[3]
out = {}
# Channels are never closed: closing one can wait on grpc's streaming threads; os._exit ends them all.
api_channel = grpc.insecure_channel(api)
stub = scheduler_pb2_grpc.SchedulerStub(api_channel)
status = stub.SchedulerStatus(scheduler_pb2.SchedulerStatusRequest(subscriberName="t"), timeout=5)
out["version"] = status.applicationVersion
out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
    health_pb2_grpc.HealthStub(api_channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)
out["scheduler_health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
    health_pb2_grpc.HealthStub(api_channel).Check(
        health_pb2.HealthCheckRequest(service="seldon.mlops.scheduler.Scheduler"), timeout=5).status)
reflect = reflection_pb2_grpc.ServerReflectionStub(api_channel)
requests = [
    reflection_pb2.ServerReflectionRequest(list_services=""),
    reflection_pb2.ServerReflectionRequest(file_containing_symbol="seldon.mlops.scheduler.Scheduler"),
]
answers = list(reflect.ServerReflectionInfo(iter(requests), timeout=5))
out["services"] = sorted(s.name for s in answers[0].list_services_response.service)
files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
         for raw in answers[1].file_descriptor_response.file_descriptor_proto]
out["reflected_files"] = sorted(f.name for f in files)
out["reflected_methods"] = [m.name for f in files for s in f.service if s.name == "Scheduler" for m in s.method]
try:
    stub.LoadModel(scheduler_pb2.LoadModelRequest(), timeout=5)
except grpc.RpcError as error:
    out["load_model"] = [error.code().name, error.details()]
try:
    stub.LoadPipeline(scheduler_pb2.LoadPipelineRequest(), timeout=5)
except grpc.RpcError as error:
    out["load_pipeline"] = [error.code().name, error.details()]
try:
    list(stub.PipelineStatus(scheduler_pb2.PipelineStatusRequest(name="nothing-here"), timeout=5))
except grpc.RpcError as error:
    out["pipeline_status"] = [error.code().name, error.details()]
agent_channel = grpc.insecure_channel(agents)
out["agent_health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
    health_pb2_grpc.HealthStub(agent_channel).Check(
        health_pb2.HealthCheckRequest(service="mlops.agent.v1.AgentService"), timeout=5).status)
try:
    list(agent_pb2_grpc.AgentServiceStub(agent_channel).Session(iter([agent_pb2.SessionRequest()]), timeout=5))
except grpc.RpcError as error:
    out["agent_session"] = error.code().name
print(json.dumps(out), flush=True)
os._exit(0)  # skip interpreter shutdown: grpc's streaming threads can stall it (the answer is out)
"""


@pytest.fixture(scope="module")
def client_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("client")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(p.relative_to(REPO / "proto")) for p in (REPO / "proto").rglob("*.proto")]
    status = protoc.main(
        ["protoc", f"-I{REPO / 'proto'}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    )
    assert status == 0
    return out


def test_client_from_protos_talks_to_scheduler(client_modules: Path, scheduler: SchedulerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, str(client_modules), scheduler.listen, scheduler.agent_listen],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)

    assert answer["version"] == __version__
    assert answer["health"] == "SERVING"
    assert answer["scheduler_health"] == "SERVING"
    assert answer["services"] == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "mlops.routing.v1.RoutingService",
        "seldon.mlops.scheduler.Scheduler",
    ]
    # Reflection serves the scheduler's file and what it imports, so tools like grpcurl can build requests.
    assert "mlops/scheduler/scheduler.proto" in answer["reflected_files"]
    assert "mlops/chainer/chainer.proto" in answer["reflected_files"]
    assert len(answer["reflected_methods"]) == 19
    # Bad input gets a code and a message that names the problem.
    assert answer["load_model"] == ["INVALID_ARGUMENT", "LoadModelRequest.model is missing"]
    assert answer["load_pipeline"] == ["INVALID_ARGUMENT", "LoadPipelineRequest.pipeline is missing"]
    # Unknown names are FAILED_PRECONDITION, which Seldon's clients read as "do not retry"; streams alike.
    assert answer["pipeline_status"][0] == "FAILED_PRECONDITION"
    assert "nothing-here" in answer["pipeline_status"][1]
    assert answer["agent_health"] == "SERVING"
    assert answer["agent_session"] == "INVALID_ARGUMENT"
