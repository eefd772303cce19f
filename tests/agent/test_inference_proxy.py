"""The agent's inference proxy in this process, in front of a real MLServer (launched once for the module) and
driven by a real ModelManager: what it answers when a model cannot be brought back onto the server (no room,
a failed load) and when the server itself is down or cannot be reached, over REST and gRPC.

The gateway skips a whole replica only for the proxy's answers marked "my server is down"
(SERVER_DOWN_HEADER); what concerns one model (no room for it, its load failed) is a plain 503 that sends
the request to another replica without taking this one out of the rotation.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from agent.inference_proxy import InferenceProxy
from agent.model_manager import ModelManager
from agent.process import start_proxy
from agent.settings import build_parser, parse_settings
from gateway.edges.v2_grpc_codec import encode_infer_request
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from generated.mlops.agent.v1 import agent_pb2
from modelplane.inference_errors import SERVER_DOWN_HEADER
from servers.adapter import InferenceServer
from servers.launch import LocalServer
from tests.support.cluster_fixtures import MIB, Iris
from tests.support.model_manager_support import Operation, manager_for, operation

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures", "tests.support.mlserver_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]  # a hang guard only

Event = agent_pb2.ModelEvent


async def load(manager: ModelManager, name: str, folder: Path, memory: int) -> None:
    event = await manager.handle(operation(Operation.KIND_LOAD, name, folder, memory=memory))
    assert event.kind == Event.KIND_LOADED, f"{Event.Kind.Name(event.kind)}: {event.reason}"


@dataclass
class Proxy:
    inner: InferenceProxy
    http: str  # base URL of its REST side
    grpc: str  # its gRPC target


@pytest.fixture
async def proxy_of(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts an InferenceProxy for a manager and a server's addresses, as the agent process does."""
    stops: list[Any] = []

    async def start(manager: ModelManager, http_url: str, grpc_target: str) -> Proxy:
        proxy = InferenceProxy(manager, http_url, grpc_target)
        argv = ["--launch-server", "--proxy-http=127.0.0.1:0", "--proxy-grpc=127.0.0.1:0"]
        settings = parse_settings(build_parser(argparse.ArgumentParser()), argv, {})
        runner, grpc_server, addresses = await start_proxy(proxy, settings)
        stops.append((proxy, runner, grpc_server))
        return Proxy(proxy, f"http://{addresses.http}", str(addresses.grpc))

    yield start
    for proxy, runner, grpc_server in stops:
        await grpc_server.stop(None)
        await runner.cleanup()
        await proxy.close()


async def post(url: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(url, json=body) as response,
    ):
        text = await response.text()
        try:
            answer = json.loads(text)
        except ValueError:  # not the JSON error every answer should be: shown as it came
            answer = {"not JSON": text}
        return response.status, answer, dict(response.headers)


async def grpc_infer(target: str, name: str, request: dict[str, Any]) -> aio.AioRpcError:
    async with aio.insecure_channel(target) as channel:
        with pytest.raises(aio.AioRpcError) as raised:
            await v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                encode_infer_request(name, None, request), timeout=120
            )
    return raised.value


async def test_a_model_with_no_room_to_come_back_is_a_503_that_does_not_mark_the_server_down(
    mlserver: InferenceServer, mlserver_process: LocalServer, iris: Iris, tmp_path: Path, proxy_of: Any
) -> None:
    # An agent held a 20 MiB model, and is restarted with --memory 10MiB: it adopts the model, which is on
    # the server. A 2 MiB model's load evicts it; a request for it then finds no room to bring it back.
    before = manager_for(mlserver, tmp_path / "cache", memory_bytes=40 * MIB, overcommit_percent=0)
    await load(before, "roomy-big", iris.folder, 20 * MIB)
    after = manager_for(mlserver, tmp_path / "cache", memory_bytes=10 * MIB, overcommit_percent=200)
    await after.adopt_from_server()
    await load(after, "roomy-small", iris.folder, 2 * MIB)
    assert "roomy-big_1" not in await mlserver.loaded_models()
    proxy = await proxy_of(after, mlserver_process.http_url, mlserver_process.grpc_target)

    status, answer, headers = await post(f"{proxy.http}/v2/models/roomy-big/infer", iris.request)
    assert status == 503, answer
    assert "no room" in answer["error"], answer
    assert "roomy-big" in answer["error"], answer
    assert len(answer["error"]) <= 300, answer
    assert SERVER_DOWN_HEADER not in headers, "one model without room says nothing of the server"
    failure = await grpc_infer(proxy.grpc, "roomy-big", iris.request)
    assert failure.code() == grpc.StatusCode.UNAVAILABLE, failure
    assert "no room" in (failure.details() or ""), failure

    # The model that fits still answers.
    status, answer, _ = await post(f"{proxy.http}/v2/models/roomy-small/infer", iris.request)
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == iris.expected
    await after.unload_everything()
    assert not {"roomy-big_1", "roomy-small_1"} & set(await mlserver.loaded_models())


async def test_a_model_that_cannot_be_loaded_again_is_a_503_that_does_not_mark_the_server_down(
    mlserver: InferenceServer, mlserver_process: LocalServer, iris: Iris, tmp_path: Path, proxy_of: Any
) -> None:
    manager = manager_for(mlserver, tmp_path / "cache", memory_bytes=10 * MIB, overcommit_percent=100)
    await load(manager, "broken-a", iris.folder, 8 * MIB)
    await load(manager, "broken-b", iris.folder, 8 * MIB)  # evicts broken-a
    assert "broken-a_1" not in await mlserver.loaded_models()
    mlserver.remove_files("broken-a_1")  # its files are gone: loading it again fails
    proxy = await proxy_of(manager, mlserver_process.http_url, mlserver_process.grpc_target)

    status, answer, headers = await post(f"{proxy.http}/v2/models/broken-a/infer", iris.request)
    assert status == 503, answer
    assert "could not load broken-a" in answer["error"], answer
    assert SERVER_DOWN_HEADER not in headers, "one model that fails to load says nothing of the server"
    status, answer, _ = await post(f"{proxy.http}/v2/models/broken-b/infer", iris.request)
    assert status == 200, answer
    await manager.unload_everything()


async def test_a_server_that_is_down_or_unreachable_is_marked_down_in_every_answer(
    mlserver: InferenceServer, mlserver_process: LocalServer, iris: Iris, tmp_path: Path, proxy_of: Any
) -> None:
    manager = manager_for(mlserver, tmp_path / "cache", memory_bytes=100 * MIB, overcommit_percent=0)
    await load(manager, "marked", iris.folder, 8 * MIB)
    proxy = await proxy_of(manager, mlserver_process.http_url, mlserver_process.grpc_target)
    status, _, headers = await post(f"{proxy.http}/v2/models/marked/infer", iris.request)
    assert status == 200
    assert SERVER_DOWN_HEADER not in headers

    # The agent's watch says the server is down: every answer that says so is marked.
    manager.server_down("the test says so")
    status, answer, headers = await post(f"{proxy.http}/v2/models/marked/infer", iris.request)
    assert status == 503, answer
    assert "the test says so" in answer["error"], answer
    assert headers.get(SERVER_DOWN_HEADER) == "1", headers
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.http}/v2/health/ready") as response:
        assert response.status == 503
        assert response.headers.get(SERVER_DOWN_HEADER) == "1"
    status, answer, headers = await post(f"{proxy.http}/v2/models/nosuch/infer", iris.request)
    assert status == 404, answer  # a model not held here is not here, whatever the server's state
    assert SERVER_DOWN_HEADER not in headers
    await manager.server_back()
    status, _, headers = await post(f"{proxy.http}/v2/models/marked/infer", iris.request)
    assert status == 200
    assert SERVER_DOWN_HEADER not in headers
    await manager.unload_everything()

    # A server the proxy cannot connect to (a port bound by nobody listening refuses connections).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        healthy = manager_for(mlserver, tmp_path / "other-cache", memory_bytes=100 * MIB, overcommit_percent=0)
        unreachable = await proxy_of(healthy, f"http://127.0.0.1:{port}", f"127.0.0.1:{port}")
        probes: list[str] = []
        unreachable.inner.on_unreachable = lambda: probes.append("now")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{unreachable.http}/v2/health/ready") as response,
        ):
            assert response.status == 503
            assert response.headers.get(SERVER_DOWN_HEADER) == "1"
            assert "unreachable" in json.loads(await response.read())["error"]
        assert probes == ["now"], "the watch is asked to probe the server at once"
