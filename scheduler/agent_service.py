"""The servicer agents connect to (mlops.agent.v1.AgentService, see proto/mlops/agent/v1/agent.proto)."""

from __future__ import annotations

from generated.mlops.agent.v1 import agent_pb2_grpc
from scheduler.unimplemented import not_built


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    Session = not_built("AgentService.Session")
