"""A FAKE Kubernetes Service for tests: one stable address in front of several endpoints, routing each new TCP
connection to an endpoint whose readiness probe passes, as kube-proxy does with a Service whose pods have a gRPC
readiness probe.

No Kubernetes runs here, and the scheduler's clients (agents, gateways, the controller) dial one address, as they
do on Kubernetes, where the scheduler's Service routes to the leader only (a standby's health says NOT_SERVING).
This fake keeps that code path: the clients are not taught to follow the leader, the Service finds it for them.

What it does: probes each endpoint's gRPC health ("" service) every ``probe_period`` seconds, like a kubelet's
readiness probe (ready while the last probe said SERVING); forwards each accepted connection, bytes both ways, to
the first ready endpoint; closes a connection at once when no endpoint is ready (a client sees the connection
fail and retries, as with a Service without endpoints); closes the client's side when the endpoint's side ends (a
killed endpoint resets its connections). An established connection stays with its endpoint, as with kube-proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc import aio

from modelplane.standard_services import check_health

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class FakeService:
    def __init__(self, name: str, endpoints: list[str], *, probe_period: float = 0.2) -> None:
        self.name = name
        self.endpoints = list(endpoints)  # HOST:PORT each
        self.ready: list[str] = []  # the endpoints whose last probe passed, in ``endpoints`` order
        self.routed: dict[str, int] = {}  # endpoint -> connections forwarded to it
        self.address = ""
        self._probe_period = probe_period
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probing: asyncio.Task[None] | None = None
        self._probed = asyncio.Event()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self._probing = asyncio.create_task(self._probe_forever())
        await self._probed.wait()
        return self.address

    async def stop(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _probe_forever(self) -> None:
        channels = {endpoint: aio.insecure_channel(endpoint) for endpoint in self.endpoints}
        try:
            while True:
                results = await asyncio.gather(*(self._probe(channels[e]) for e in self.endpoints))
                ready = [endpoint for endpoint, passed in zip(self.endpoints, results, strict=True) if passed]
                if ready != self.ready:
                    log.info("fake service %s: ready endpoints %s", self.name, ready)
                self.ready = ready
                self._probed.set()
                await asyncio.sleep(self._probe_period)
        finally:
            for channel in channels.values():
                await channel.close()

    @staticmethod
    async def _probe(channel: aio.Channel) -> bool:
        try:
            return await check_health(channel, timeout=1.0) == "SERVING"
        except aio.AioRpcError:
            return False

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # stop() cancels the connections: that is their end
            await self._forward_one(client_reader, client_writer)

    async def _forward_one(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.ready:
                return
            endpoint = self.ready[0]
            host, _, port = endpoint.rpartition(":")
            try:
                server_reader, server_writer = await asyncio.open_connection(host, int(port))
            except OSError:
                return
            self.routed[endpoint] = self.routed.get(endpoint, 0) + 1
            try:
                pipes = [
                    asyncio.create_task(_pipe(client_reader, server_writer)),
                    asyncio.create_task(_pipe(server_reader, client_writer)),
                ]
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
            finally:
                server_writer.close()
                with contextlib.suppress(OSError):
                    await server_writer.wait_closed()
        finally:
            client_writer.close()
            with contextlib.suppress(OSError):
                await client_writer.wait_closed()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
