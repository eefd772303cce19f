"""What one HTTP hop of the data path costs by itself: a proxy process between a client and a stub server.

The gateway and the agent's inference proxy are each such a hop (bench/gateway_inference.py measures the whole
path with real processes). This isolates one hop, so what is the kernel's and aiohttp's floor and what is
modelplane's shows: three processes on 127.0.0.1, a stub V2 server that answers every infer at once with a fixed
iris answer, one proxy of the kind asked for, and this script as the client (aiohttp, one kept-alive session):
500 sequential requests (p50), then ``--clients`` clients for ``--seconds`` (requests/s, and the proxy's CPU
per request from ``/proc/PID/stat``, user and system).

Proxies (``--proxy``, several may be given; they take turns ``--rounds`` times):
  ``aiohttp-client``  an aiohttp server whose handler forwards with aiohttp's ClientSession (main's hop client);
  ``hop-client``      the same server forwarding with modelplane.http_hop.HopClient;
  ``agent``           the agent's real InferenceProxy REST app (a stub model manager), without the access check;
  ``agent-protected`` the same with modelplane.auth.http_access.protect (authentication off, as in ``up``).
``--loop asyncio|uvloop`` picks the proxy's event loop (uvloop is not a dependency: install it to compare).

    .venv/bin/python bench/hop_floor.py --proxy aiohttp-client hop-client agent agent-protected --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))

ANSWER = (
    b'{"model_name":"iris_1","model_version":"1","id":"0f1c8a84","parameters":{},"outputs":[{"name":"predict",'
    b'"shape":[2,1],"datatype":"INT64","parameters":{"content_type":"np"},"data":[0,2]}]}'
)
REQUEST = (
    b'{"inputs":[{"name":"predict","shape":[2,4],"datatype":"FP64","data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}]}'
)
PROXIES = ("aiohttp-client", "hop-client", "agent", "agent-protected")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------ the processes


async def serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def stub_app() -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    return app


def forwarding_app(kind: str, upstream: str) -> web.Application:
    """An aiohttp server whose one route forwards the body upstream, with aiohttp's client or HopClient."""
    from modelplane.http_hop import HopClient  # noqa: PLC0415

    hop = HopClient()
    session: list[aiohttp.ClientSession] = []

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        if kind == "hop-client":
            answer = await hop.request("POST", upstream, request.path, headers=headers, body=body)
            status, content_type, payload = answer.status, answer.headers.get("content-type", ""), answer.body
        else:
            if not session:
                session.append(aiohttp.ClientSession())
            async with session[0].post(upstream + request.path, data=body, headers=headers) as reply:
                status, content_type, payload = reply.status, reply.headers.get("Content-Type", ""), await reply.read()
        response = web.Response(body=payload, status=status, content_type=None)
        response.headers["Content-Type"] = content_type
        return response

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    return app


def agent_app(upstream: str, protected: bool) -> web.Application:
    from agent.inference_proxy import InferenceProxy  # noqa: PLC0415
    from modelplane.auth.access_check import AccessCheck, AuthSettings  # noqa: PLC0415
    from modelplane.auth.http_access import protect  # noqa: PLC0415

    class Models:  # what the proxy asks of the agent's model manager: every model is on the server
        down_reason = None

        async def ensure_on_server(self, name: str, version: int | None = None) -> str:
            return f"{name}_1"

    proxy = InferenceProxy(Models(), upstream, "127.0.0.1:1")  # type: ignore[arg-type]
    app = proxy.rest_app()
    return protect(app, AccessCheck(AuthSettings())) if protected else app


def run_role(role: str, port: int, upstream: str, loop: str) -> None:
    if role == "stub":
        app = stub_app()
    elif role in ("aiohttp-client", "hop-client"):
        app = forwarding_app(role, upstream)
    else:
        app = agent_app(upstream, role == "agent-protected")
    if loop == "uvloop":
        uvloop = importlib.import_module("uvloop")  # not a dependency of modelplane: `pip install uvloop` to compare
        uvloop.run(serve(app, port))
    else:
        asyncio.run(serve(app, port))


# ------------------------------------------------------------------------------------------ measuring


def cpu_ms(pid: int) -> tuple[float, float]:
    """(user, system) CPU milliseconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) * 10.0, int(fields[12]) * 10.0


def start(role: str, port: int, upstream: str, loop: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--role", role, "--port", str(port), "--upstream", upstream, "--loop", loop]
    return subprocess.Popen(command, cwd=REPO)  # noqa: S603


async def wait_ready(url: str, timeout: float = 60.0) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
        while True:
            try:
                async with http.post(url, data=REQUEST, headers={"Content-Type": "application/json"}) as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def measure(url: str, pid: int, clients: int, seconds: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> None:
            async with http.post(url, data=REQUEST, headers=headers) as reply:
                await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"HTTP {reply.status}")

        for _ in range(200):  # warm-up: connections made, first-request paths taken
            await one()
        latencies = []
        for _ in range(500):
            started = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - started)
        done = 0
        deadline = time.perf_counter() + seconds
        before, started = cpu_ms(pid), time.perf_counter()

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one()
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        wall, after = time.perf_counter() - started, cpu_ms(pid)
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "requests_per_s": round(done / wall),
        "proxy_user_ms_per_request": round((after[0] - before[0]) / done, 4),
        "proxy_system_ms_per_request": round((after[1] - before[1]) / done, 4),
    }


async def benchmark(options: argparse.Namespace) -> list[dict[str, Any]]:
    stub_port = free_port()
    stub = start("stub", stub_port, "", "asyncio")
    upstream = f"http://127.0.0.1:{stub_port}"
    results = []
    try:
        await wait_ready(f"{upstream}/v2/models/iris_1/infer")
        for turn in range(options.rounds):
            for kind in options.proxy:
                port = free_port()
                proxy = start(kind, port, upstream, options.loop)
                try:
                    url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
                    await wait_ready(url)
                    figures = await measure(url, proxy.pid, options.clients, options.seconds)
                finally:
                    proxy.terminate()
                    proxy.wait(30)
                figures |= {"proxy": kind, "loop": options.loop, "round": turn + 1}
                user, system = figures["proxy_user_ms_per_request"], figures["proxy_system_ms_per_request"]
                print(
                    f"round {turn + 1} {kind:<16} {options.loop:<7} p50 {figures['p50_ms']:.3f} ms  "
                    f"{figures['requests_per_s']:>6} req/s  proxy CPU {user + system:.3f} ms/request "
                    f"(user {user:.3f}, system {system:.3f})",
                    flush=True,
                )
                results.append(figures)
    finally:
        stub.terminate()
        stub.wait(30)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The CPU one HTTP hop of the data path costs per request.")
    parser.add_argument("--proxy", nargs="+", choices=PROXIES, default=["hop-client", "agent-protected"])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--role", choices=("stub", *PROXIES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if options.role is not None:
        run_role(options.role, options.port, options.upstream, options.loop)
        return 0
    results = asyncio.run(benchmark(options))
    if options.json is not None:
        options.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
