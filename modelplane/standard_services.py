"""Typed access to gRPC's standard health and reflection services, for servers and clients.

grpcio-health-checking and grpcio-reflection ship without type information; this module is the one
place that calls them untyped, so everything else stays under mypy's strict checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as _health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE: str = reflection.SERVICE_NAME
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """The health service of one process, shared by all its servers."""

    def __init__(self) -> None:
        self._servicer: Any = _health_aio.HealthServicer()

    def add_to(self, server: aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def set_serving(self, service: str) -> None:
        await self._servicer.set(service, SERVING)

    async def set_not_serving(self, service: str) -> None:
        """``service`` ("" for the whole server) answers NOT_SERVING: up, but not ready (a standby scheduler)."""
        await self._servicer.set(service, NOT_SERVING)

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: watchers hear it before the server goes away."""
        await self._servicer.enter_graceful_shutdown()


def add_reflection(server: aio.Server, services: Sequence[str]) -> None:
    reflection.enable_server_reflection([*services, REFLECTION_SERVICE], server)


def status_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


async def check_health(channel: aio.Channel, service: str = "", *, timeout: float) -> str:
    """The serving status of ``service`` ("" for the whole server), e.g. "SERVING"."""
    stub: Any = health_pb2_grpc.HealthStub(channel)
    response: health_pb2.HealthCheckResponse = await stub.Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout
    )
    return status_name(response.status)


def watch_health(channel: aio.Channel, service: str = "") -> aio.UnaryStreamCall[Any, health_pb2.HealthCheckResponse]:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    call: aio.UnaryStreamCall[Any, health_pb2.HealthCheckResponse] = stub.Watch(
        health_pb2.HealthCheckRequest(service=service)
    )
    return call


async def list_services(channel: aio.Channel, *, timeout: float) -> tuple[str, ...]:
    """The services a server offers, through server reflection."""
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=timeout)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    response = await call.read()
    if not isinstance(response, reflection_pb2.ServerReflectionResponse):
        raise ConnectionError("the server closed the reflection stream without answering")
    return tuple(sorted(s.name for s in response.list_services_response.service))
