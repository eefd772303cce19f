"""The table of who may call what (modelplane/auth/access_table.py), generated from the descriptors: every RPC of
every service is in it (a new RPC cannot slip through unprotected), and every RPC the scheduler serves, called
on a live server with each role's token and with no credential, is refused or let through as the table says.
The same for the V2 inference service and for every HTTP route of every HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import pkgutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from aiohttp import ClientSession, web
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import generated
from agent.inference_proxy import InferenceProxy
from gateway.edges.grpc_edge import v2_grpc_service
from gateway.edges.rest_app import build_app as gateway_app
from gateway.edges.v2_grpc_service import add_v2_inference_service
from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_router import InferenceRouter
from gateway.replica_client import ReplicaClient
from gateway.routing_table import RoutingTable
from generated.mlops.agent.v1 import agent_pb2_grpc
from modelplane.addresses import Address, parse_address
from modelplane.auth.access_check import AccessCheck, AuthSettings
from modelplane.auth.access_table import GRPC_METHODS, HTTP_ROUTES, Access, Role, Rule
from modelplane.auth.http_access import protect
from modelplane.standard_services import HEALTH_SERVICE, Health, add_reflection
from modelplane.stream_watchdog import StreamWatchdog
from modelplane.transport import TransportSecurity, bind, new_server, open_channel
from registry.api.app import build_app as registry_app
from scheduler.agent_service import AgentService
from scheduler.core import CoreSettings, SchedulerCore
from scheduler.persistence import MemoryStateStore
from scheduler.request_limits import RequestLimits
from scheduler.routing_service import RoutingService
from scheduler.scheduler_service import SchedulerService
from tests.support.auth_material import (
    IDENTITIES,
    TOKENS,
    Admissions,
    RecordingInterceptor,
    bearer,
    one_identity_per_role,
)
from trainer.service.status_api import build_app as trainer_app

REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Services in generated/ that no modelplane process serves, and why.
NOT_SERVED = {"seldon.mlops.chainer.Chainer": "Seldon's dataflow engine's API; modelplane has no chainer"}


def _generated_files() -> Iterator[FileDescriptor]:
    for module in pkgutil.walk_packages(generated.__path__, "generated."):
        if module.name.endswith("_pb2"):
            yield importlib.import_module(module.name).DESCRIPTOR
    yield health_pb2.DESCRIPTOR
    yield reflection_pb2.DESCRIPTOR


def _all_methods() -> dict[str, MethodDescriptor]:
    methods: dict[str, MethodDescriptor] = {}
    for file in _generated_files():
        for service in file.services_by_name.values():
            if service.full_name in NOT_SERVED:
                continue
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = method
    return methods


def test_every_rpc_of_every_service_is_in_the_table() -> None:
    methods = _all_methods()
    assert len(methods) > 30
    missing = sorted(set(methods) - set(GRPC_METHODS))
    assert not missing, f"RPCs without an entry in modelplane/auth/access_table.py: {missing}"
    stale = sorted(set(GRPC_METHODS) - set(methods))
    assert not stale, f"entries for RPCs no service has: {stale}"


def test_every_resource_field_path_exists_in_its_request() -> None:
    methods = _all_methods()
    for name, rule in GRPC_METHODS.items():
        if rule.resource is None:
            continue
        for path in (rule.resource.name, rule.resource.namespace):
            message = methods[name].input_type
            for part in filter(None, path.split(".")):
                assert part in message.fields_by_name, f"{name}: {path} is not a field path of {message.full_name}"
                message = message.fields_by_name[part].message_type or message


def _expected(rule: Rule, role: Role | None, inference_check: bool) -> bool:
    """Whether a caller with ``role`` (None: no credential) is let through."""
    if rule.access is Access.OPEN or (rule.access is Access.INFERENCE and not inference_check):
        return True
    if role is None:
        return False
    return rule.access is not Access.ROLES or role in rule.roles


async def _call(channel: aio.Channel, name: str, method: MethodDescriptor, metadata: Any) -> aio.Call:
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    serialize, parse = request_class.SerializeToString, response_class.FromString
    if method.client_streaming:
        stream = channel.stream_stream(name, request_serializer=serialize, response_deserializer=parse)
        return cast(aio.Call, stream(metadata=metadata))
    if method.server_streaming:
        return cast(aio.Call, channel.unary_stream(name, serialize, parse)(request_class(), metadata=metadata))
    return cast(aio.Call, channel.unary_unary(name, serialize, parse)(request_class(), metadata=metadata))


async def _check_every_method(
    channel: aio.Channel, admissions: Admissions, services: set[str], inference_check: bool
) -> int:
    checked = 0
    for name, method in sorted(_all_methods().items()):
        if method.containing_service.full_name not in services:
            continue
        rule = GRPC_METHODS[name]
        for role in (None, *Role):
            since = len(admissions.seen)
            call = await _call(channel, name, method, bearer(TOKENS[role]) if role is not None else None)
            ended = asyncio.ensure_future(call.code())
            admitted = asyncio.ensure_future(admissions.wait_for(name, since))
            try:
                await asyncio.wait([ended, admitted], timeout=60, return_when=asyncio.FIRST_COMPLETED)
                assert ended.done() or admitted.done(), f"{name} as {role}: neither refused nor admitted"
            finally:
                call.cancel()
                admitted.cancel()
            who = role.value if role is not None else "no credential"
            # Recorded before the handler runs, so before any answer leaves the server (same event loop).
            reached = [caller for seen, caller in admissions.seen[since:] if seen == name]
            if _expected(rule, role, inference_check):
                assert reached, f"{name} as {who}: refused: {await call.details()}"
                assert reached[0].identity == (IDENTITIES[role] if role is not None else "")
                if ended.done():
                    assert ended.result() not in REFUSALS, f"{name} as {who}: {await call.details()}"
            else:
                code = await ended
                details = await call.details()
                assert not reached, f"{name} reached as {who}"
                if role is None:
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (name, details)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (name, who, details)
                    assert all(needed in details for needed in rule.roles), (name, details)
            checked += 1
    return checked


@contextlib.asynccontextmanager
async def _server(
    access: AccessCheck, admissions: Admissions, *after: aio.ServerInterceptor
) -> AsyncIterator[tuple[aio.Server, str]]:
    server = new_server([RecordingInterceptor(admissions), *after], access)
    port = bind(server, Address("127.0.0.1", 0), TransportSecurity())
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


SCHEDULER_SERVICES = {
    "seldon.mlops.scheduler.Scheduler",
    "mlops.routing.v1.RoutingService",
    "mlops.agent.v1.AgentService",
    HEALTH_SERVICE,
    "grpc.reflection.v1alpha.ServerReflection",
}


@contextlib.asynccontextmanager
async def _scheduler(folder: Path, admissions: Admissions) -> AsyncIterator[str]:
    """The scheduler's services as its process mounts them (scheduler/process.py), on one port, with one identity
    per role; RequestLimits after the check, as in the scheduler process."""
    tokens, policy = one_identity_per_role(folder)
    access = AccessCheck(AuthSettings(tokens_file=tokens, policy_file=policy))
    core = SchedulerCore(MemoryStateStore(), CoreSettings(sync_grace_seconds=0))
    await core.start()
    try:
        async with _server(access, admissions, RequestLimits()) as (server, address):
            streams = StreamWatchdog()
            SchedulerService(core, streams).add_to(server)
            RoutingService(core, streams).add_to(server)
            agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(core, 5.0), server)
            health = Health()
            health.add_to(server)
            add_reflection(server, sorted(SCHEDULER_SERVICES - {"grpc.reflection.v1alpha.ServerReflection"}))
            await server.start()
            await health.set_serving("")
            yield address
    finally:
        await core.close()


async def test_every_scheduler_rpc_with_each_role_and_without_a_credential(tmp_path: Path) -> None:
    admissions = Admissions()
    async with _scheduler(tmp_path, admissions) as address, aio.insecure_channel(address) as channel:
        checked = await _check_every_method(channel, admissions, SCHEDULER_SERVICES, inference_check=False)
    served = [method for method in _all_methods().values() if method.containing_service.full_name in SCHEDULER_SERVICES]
    assert checked == (len(Role) + 1) * len(served)


async def test_a_clients_token_goes_with_every_kind_of_call(tmp_path: Path) -> None:
    """open_channel(token=...) as the gateway (unary, server streams) and the agents (bidirectional) use it."""
    admissions = Admissions()
    async with _scheduler(tmp_path, admissions) as address:
        for role, rpc in ((Role.VIEWER, "SchedulerStatus"), (Role.GATEWAY, "WatchRoutes"), (Role.AGENT, "Session")):
            name = next(name for name in GRPC_METHODS if name.endswith("/" + rpc))
            method = _all_methods()[name]
            since = len(admissions.seen)
            async with open_channel(parse_address(address), TransportSecurity(), TOKENS[role]) as channel:
                call = await _call(channel, name, method, None)
                try:
                    caller = await asyncio.wait_for(admissions.wait_for(name, since), 60)
                finally:
                    call.cancel()
            assert caller.identity == IDENTITIES[role]


async def test_every_v2_inference_rpc_with_the_inference_check_on(tmp_path: Path) -> None:
    """The gateway's --grpc-listen (and the agent proxy) serve inference.GRPCInferenceService: with the inference
    check on, any authenticated caller may infer, none without a credential; liveness and readiness stay open.
    The gateway's own service, routing by an empty table (admitted calls find no model)."""
    tokens, policy = one_identity_per_role(tmp_path)
    access = AccessCheck(AuthSettings(tokens_file=tokens, policy_file=policy, inference_check=True))
    admissions = Admissions()
    client = ReplicaClient()
    router = InferenceRouter(RoutingTable, client, GatewayMetrics())
    try:
        async with _server(access, admissions) as (server, address):
            add_v2_inference_service(server, v2_grpc_service(router, lambda: True))
            await server.start()
            async with aio.insecure_channel(address) as channel:
                checked = await _check_every_method(
                    channel, admissions, {"inference.GRPCInferenceService"}, inference_check=True
                )
    finally:
        await router.close()
        await client.close()
    assert checked == 6 * (len(Role) + 1)


class _ServerDown:
    """A model manager whose server is down: the agent proxy answers every admitted call UNAVAILABLE."""

    down_reason = "the test's server is down"


async def test_every_agent_proxy_rpc_with_the_inference_check_on(tmp_path: Path) -> None:
    """The agent proxy's gRPC (a generic handler, forwarding raw bytes) behind the same check."""
    tokens, policy = one_identity_per_role(tmp_path)
    access = AccessCheck(AuthSettings(tokens_file=tokens, policy_file=policy, inference_check=True))
    admissions = Admissions()
    proxy = InferenceProxy(cast(Any, _ServerDown()), "http://127.0.0.1:1", "127.0.0.1:1")
    async with _server(access, admissions) as (server, address):
        server.add_generic_rpc_handlers((proxy.grpc_handler(),))
        await server.start()
        async with aio.insecure_channel(address) as channel:
            checked = await _check_every_method(
                channel, admissions, {"inference.GRPCInferenceService"}, inference_check=True
            )
    await proxy.close()
    assert checked == 6 * (len(Role) + 1)


class _NoRuns:
    async def list_runs(self, limit: int = 100) -> list[Any]:
        return []

    async def get(self, run_id: str) -> Any:
        return None


def _apps() -> dict[str, web.Application]:
    proxy = InferenceProxy(cast(Any, None), "http://127.0.0.1:1", "127.0.0.1:1")
    return {
        "gateway": gateway_app(cast(Any, None), GatewayMetrics(), lambda: True),
        "agent proxy": proxy.rest_app(),
        "trainer": trainer_app(cast(Any, _NoRuns()), lambda: {}),
        "registry": registry_app(cast(Any, None)),
    }


def test_every_http_route_of_every_server_is_in_the_table() -> None:
    from modelplane.auth.access_table import http_route_key  # noqa: PLC0415

    for server, app in _apps().items():
        for route in app.router.routes():
            resource = route.resource
            assert resource is not None
            key = http_route_key(route.method, resource.canonical)
            assert key in HTTP_ROUTES, f"{server}: route {key} is not in modelplane/auth/access_table.py"


@pytest.mark.parametrize("role", [None, *Role])
async def test_trainer_status_api_routes_with_each_role(tmp_path: Path, role: Role | None) -> None:
    """The HTTP middleware on a live HTTP server: 401 without a credential, 403 naming the role, else through."""
    tokens, policy = one_identity_per_role(tmp_path)
    access = AccessCheck(AuthSettings(tokens_file=tokens, policy_file=policy))
    app = protect(trainer_app(cast(Any, _NoRuns()), lambda: {}), access)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    headers = dict(bearer(TOKENS[role])) if role is not None else {}
    try:
        async with ClientSession() as session:
            for path, rule in (("/healthz", HTTP_ROUTES["GET /healthz"]), ("/runs", HTTP_ROUTES["GET /runs"])):
                async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response:
                    body = await response.json()
                    if _expected(rule, role, inference_check=False):
                        assert response.status == 200, body
                    elif role is None:
                        assert response.status == 401, body
                        assert response.headers["WWW-Authenticate"] == "Bearer"
                    else:
                        assert response.status == 403, body
                        assert "viewer" in body["error"]
    finally:
        await runner.cleanup()
