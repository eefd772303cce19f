"""An inline storage secret goes to the agent that loads the model and nowhere else, with real processes.

A model whose LoadModel carries an inline ``storageRcloneConfig`` is loaded from the session's S3 store (SeaweedFS)
by a real scheduler, agent, MLServer and gateway; it fails (a URI with nothing behind it), is loaded again, the
scheduler restarts, the client gives the config again, and the model is unloaded. Every answer and every message
of every stream seen meanwhile (model and server status, SubscribeControlPlane, the gateways' WatchRoutes), the
gateway's metrics, and every file under the test's folder (the scheduler's state dir, every process's log, the
agent's and MLServer's folders) are then searched for the secret, raw and encoded: zero hits. The search
first proves it can find the secret, in a file written for that purpose.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message
from grpc import aio

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.storage_secrets import REDACTED_RCLONE_CONFIG
from tests.support.cluster_fixtures import Api, Cluster, Iris, api_of, model
from tests.support.processes import GatewayProcess, start_gateway, stop_process
from tests.support.real_components import SECRET_KEY, S3Server

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]

pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]  # the timeout is a hang guard only


def encodings(secret: str) -> list[bytes]:
    """``secret`` as a file or message may hold it: raw, hex (either case) and base64 at each of its 3 offsets
    (the middle of an encoding that does not depend on the bytes around it)."""
    raw = secret.encode()
    found = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw + b"\0\0\0")
        found.append(encoded[4 : len(encoded) - 8])
    return found


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``root`` holding any of ``needles``, as "path: needle"."""
    hits: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits.extend(f"{path}: {needle!r}" for needle in needles if needle in data)
    return hits


def messages_holding(messages: list[Message], needles: list[bytes]) -> list[str]:
    hits: list[str] = []
    for message in messages:
        shown = message.SerializeToString() + text_format.MessageToString(message).encode()
        hits.extend(f"{type(message).__name__}: {needle!r}" for needle in needles if needle in shown)
    return hits


class Streams:
    """Every message of every status and routing stream the scheduler offers, kept for the search."""

    def __init__(self) -> None:
        self.seen: list[Message] = []
        self._tasks: list[asyncio.Task[None]] = []

    def follow(self, stream: aio.UnaryStreamCall[Any, Any]) -> None:
        async def read() -> None:
            with contextlib.suppress(aio.AioRpcError):  # the stream ends when its scheduler stops
                async for message in stream:
                    self.seen.append(message)

        self._tasks.append(asyncio.create_task(read()))

    def follow_all(self, channel: aio.Channel, who: str) -> None:
        scheduler = pb_grpc.SchedulerStub(channel)
        self.follow(scheduler.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=who)))
        self.follow(scheduler.SubscribeServerStatus(pb.ServerSubscriptionRequest(subscriberName=who)))
        self.follow(scheduler.SubscribeControlPlane(pb.ControlPlaneSubscriptionRequest(subscriberName=who)))
        self.follow(rpb_grpc.RoutingServiceStub(channel).WatchRoutes(rpb.WatchRoutesRequest(gateway_name=who)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.contextmanager
def gateway_of(cluster: Cluster) -> Iterator[GatewayProcess]:
    assert cluster.scheduler is not None
    gateway = start_gateway(cluster.root / "gateway", cluster.scheduler.listen)
    try:
        yield gateway
    finally:
        stop_process(gateway.process)


async def statuses(api: Api, name: str) -> list[Message]:
    """The one-shot status answers a client can ask for."""
    answers: list[Message] = [await api.status(name)]
    request = pb.ModelStatusRequest(subscriberName="search", allVersions=True)
    answers.extend([s async for s in api.stub.ModelStatus(request, timeout=10)])
    answers.extend([s async for s in api.stub.ServerStatus(pb.ServerStatusRequest(subscriberName="search"))])
    return answers


async def test_an_inline_secret_appears_in_no_status_stream_log_or_state_file(
    cluster: Cluster, s3_server: S3Server, iris: Iris
) -> None:
    # The unique secret rides in the config text; the store's real secret key is searched for as well.
    unique = f"leak-canary-{uuid.uuid4().hex}"
    config = json.dumps({**s3_server.config(), "description": unique})
    needles = [*encodings(unique), *encodings(SECRET_KEY)]
    bucket = s3_server.new_bucket({"iris/model.joblib": iris.joblib})
    seen: list[Message] = []

    cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    with gateway_of(cluster) as gateway:
        streams = Streams()
        async with api_of(cluster) as api:
            assert cluster.scheduler is not None
            async with aio.insecure_channel(cluster.scheduler.listen) as channel:
                streams.follow_all(channel, "leak-search-1")
                await api.load(model("iris", f"s3://{bucket}/no/such/model", rclone_config=config))
                reason = await api.failed("iris")
                assert "no/such/model" in reason
                await api.load(model("iris", f"s3://{bucket}/iris", rclone_config=config))
                await api.available("iris", version=2)
                seen.extend(await statuses(api, "iris"))
                await streams.close()

        # A restart: the model keeps serving from its replica; the client gives its config again (SEND_MODELS).
        first = cluster.scheduler
        assert first is not None
        stop_process(first.process)
        shutil.move(first.log_path, first.log_path.with_name("scheduler-before-restart.log"))
        # On the same ports: the agent and the gateway reconnect to them.
        await asyncio.to_thread(
            cluster.start_scheduler, f"--listen={first.listen}", f"--agent-listen={first.agent_listen}"
        )
        assert cluster.scheduler is not None
        streams_again = Streams()
        async with api_of(cluster) as api, aio.insecure_channel(cluster.scheduler.listen) as channel:
            streams_again.follow_all(channel, "leak-search-2")
            await api.available("iris", version=2)
            await api.load(model("iris", f"s3://{bucket}/iris", rclone_config=config))
            await api.available("iris", version=2)  # the same version: the config came back in place
            seen.extend(await statuses(api, "iris"))
            await api.unload("iris")
            await api.gone("iris")
            await streams_again.close()
        # Every process's metrics: kept as files under the folder searched.
        scheduler_metrics = f"http://{cluster.scheduler.metrics_listen}/metrics"
        endpoints = {"gateway": f"{gateway.url}/metrics", "scheduler": scheduler_metrics}
        endpoints |= {f"agent{a.replica_idx}": f"{a.proxy_url}/metrics" for a in cluster.agents}
        async with aiohttp.ClientSession() as http:
            for name, url in endpoints.items():
                async with http.get(url) as scraped:
                    assert scraped.status == 200
                    (cluster.root / f"{name}-metrics.txt").write_bytes(await scraped.read())
    seen.extend(streams.seen + streams_again.seen)
    assert any(isinstance(m, pb.ModelStatusResponse) and m.modelName == "iris" for m in streams.seen)
    assert any(isinstance(m, rpb.WatchRoutesResponse) for m in streams_again.seen)

    hits = files_holding(cluster.root, needles)
    # The search can find the secret: in a file written with it on purpose, in two encodings.
    canary = cluster.root / "canary" / "written-on-purpose.bin"
    canary.parent.mkdir()
    encoded = unique.encode()
    canary.write_bytes(b"x" + encoded.hex().encode() + b"\n" + base64.b64encode(b"ab" + encoded))
    found = [hit for hit in files_holding(cluster.root, needles) if hit not in hits]
    assert [hit.split(": ")[0] for hit in found] == [str(canary)] * 2, found
    canary.unlink()

    assert hits == []
    assert messages_holding(seen, needles) == []
    # What a status shows instead: that the model has an inline config, not what it is.
    shown = seen[0]
    assert isinstance(shown, pb.ModelStatusResponse)
    assert shown.versions[-1].modelDefn.modelSpec.storageConfig.storageRcloneConfig == REDACTED_RCLONE_CONFIG
