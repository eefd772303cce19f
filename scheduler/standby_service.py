"""What a standby scheduler serves while another replica leads: health that says not-ready, and UNAVAILABLE naming
the leader to every other call, on both listeners.

Why UNAVAILABLE with the leader's address, not forwarding: a forwarding standby would have to relay every RPC kind
(the agents' bidirectional sessions, the status streams, WatchRoutes) with its caller's identity, deadlines and
cancellation, and would keep serving through a leader it cannot see is gone; a refusal is one small handler, and
UNAVAILABLE is the code every gRPC client (and Seldon's controller) already retries. The leader's address is in the
message, for people, and in the trailing metadata ``modelplane-leader`` (HOST:PORT of the same listener on the
leader), for clients that want to follow it. On Kubernetes clients need neither: the standby's health service says
NOT_SERVING, so a readiness probe (``grpc: {port: ...}``) keeps it out of the Service, which routes to the leader.
Nothing is served from a standby's own state, not even reads: it may be stale, and nothing reported may be false.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck
from modelplane.standard_services import HEALTH_SERVICE, REFLECTION_SERVICE, Health, add_reflection
from modelplane.transport import bind, new_server
from scheduler.settings import SchedulerSettings

LEADER_METADATA_KEY = "modelplane-leader"

LeaderAddress = Callable[[], str | None]


class StandbyRefusal(grpc.GenericRpcHandler):
    """Answers every method but health and reflection with UNAVAILABLE and the leader's address, when known."""

    def __init__(self, leader: LeaderAddress) -> None:
        self._leader = leader

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        if method.startswith((f"/{HEALTH_SERVICE}/", f"/{REFLECTION_SERVICE}/")):
            return None
        # Stream-stream with no deserializer fits every method kind: nothing is read, the call is refused at once.
        return grpc.stream_stream_rpc_method_handler(self._refuse)

    async def _refuse(self, requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]) -> None:
        leader = self._leader()
        if leader is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "this scheduler is a standby and knows no leader yet (an election is under way): try again shortly",
            )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"this scheduler is a standby, not the leader: the leader is at {leader}",
            trailing_metadata=((LEADER_METADATA_KEY, leader),),
        )


class StandbyListeners:
    """The two listeners of a standby (``listen`` and ``agent_listen``), not ready, refusing with the leader's
    address of the same listener."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._settings = settings
        self._api_leader: LeaderAddress = lambda: None
        self._agent_leader: LeaderAddress = lambda: None
        self._servers: list[aio.Server] = []
        self.api_address = settings.listen
        self.agent_address = settings.agent_listen

    def follow(self, api_leader: LeaderAddress, agent_leader: LeaderAddress) -> None:
        """Where the leader's API and agent listeners are (asked at each refusal)."""
        self._api_leader, self._agent_leader = api_leader, agent_leader

    def _api_hint(self) -> str | None:
        return self._api_leader()

    def _agent_hint(self) -> str | None:
        return self._agent_leader()

    async def start(self) -> None:
        """Listen on both addresses (raises TransportError when one cannot be bound)."""
        health = Health()
        access = AccessCheck(self._settings.auth)
        bound: list[Address] = []
        for address, leader in (
            (self._settings.listen, self._api_hint),
            (self._settings.agent_listen, self._agent_hint),
        ):
            server = new_server((), access)
            health.add_to(server)
            add_reflection(server, [HEALTH_SERVICE])
            server.add_generic_rpc_handlers((StandbyRefusal(leader),))
            port = bind(server, address, self._settings.security)
            bound.append(Address(address.host, port))
            self._servers.append(server)
        for server in self._servers:
            await server.start()
        await health.set_not_serving("")  # not ready: a readiness probe keeps a standby out of the Service
        self.api_address, self.agent_address = bound

    async def stop(self) -> None:
        """Stop both listeners at once (their calls are refusals and health checks: nothing to wait for)."""
        for server in self._servers:
            await server.stop(None)
        self._servers.clear()
