"""``modelplane status``: ask a running scheduler who it is, whether it serves, and what it offers."""

from __future__ import annotations

from dataclasses import dataclass

from generated.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from modelplane.addresses import Address
from modelplane.standard_services import check_health, list_services
from modelplane.transport import TransportSecurity, open_channel


@dataclass(frozen=True, slots=True)
class SchedulerReport:
    address: Address
    version: str
    health: str
    services: tuple[str, ...]
    models: int
    servers: int
    replicas: int

    def render(self) -> str:
        return "\n".join(
            [
                f"scheduler at {self.address}",
                f"  version:  {self.version}",
                f"  health:   {self.health}",
                f"  services: {', '.join(self.services)}",
                f"  models:   {self.models}",
                f"  servers:  {self.servers} ({self.replicas} replicas connected)",
            ]
        )


async def fetch_report(
    address: Address, security: TransportSecurity, timeout: float, *, token: str | None = None
) -> SchedulerReport:
    """Raises grpc.aio.AioRpcError when the scheduler cannot be reached or answers with an error."""
    async with open_channel(address, security, token) as channel:
        status = await scheduler_pb2_grpc.SchedulerStub(channel).SchedulerStatus(
            scheduler_pb2.SchedulerStatusRequest(subscriberName="modelplane-cli"), timeout=timeout
        )
        health = await check_health(channel, timeout=timeout)
        services = await list_services(channel, timeout=timeout)
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        models = [m async for m in stub.ModelStatus(scheduler_pb2.ModelStatusRequest(), timeout=timeout)]
        servers = [s async for s in stub.ServerStatus(scheduler_pb2.ServerStatusRequest(), timeout=timeout)]
    return SchedulerReport(
        address=address,
        version=status.applicationVersion,
        health=health,
        services=services,
        models=len(models),
        servers=len(servers),
        replicas=sum(s.availableReplicas for s in servers),
    )
