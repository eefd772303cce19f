"""V2 REST inference through the gateway vs straight to MLServer, side by side in one run.

What it measures (see bench/README.md for why, and for recorded results), with one real stack: a
``modelplane scheduler``, one ``modelplane agent --launch-server`` (its own MLServer) and a ``modelplane
gateway``, all processes on 127.0.0.1:

1. One model, the iris sample, the same request body (two flowers), three ways:
   ``direct``  MLServer itself, ``/v2/models/iris_1/infer`` (the name the agent loaded it under);
   ``proxy``   the agent's inference proxy, ``/v2/models/iris/infer`` (what the gateway sends to);
   ``gateway`` the gateway, ``/v2/models/iris/infer`` (gateway -> agent proxy -> MLServer).
   Latency: N sequential requests on a kept-alive connection, p50/p90/p99. Throughput: C clients, each
   sending its next request when the last is answered, for T seconds. Both in R rounds; within a round the
   three take turns in short slices (25 requests; 1 s of throughput; the order rotating), so a change of the
   shared machine's load hits all three alike, and drift between rounds shows in the per-round figures.
2. A pipeline ``pa -> pb, pa -> pc, join pb + pc -> output`` (tests/e2e/test_gateway_pipelines.py's) through
   the gateway, ``/v2/pipelines/abc/infer``, against the same three model calls made by hand straight to
   MLServer: a then b then c, and a then b and c concurrently; also by hand through the gateway's model
   routes (b and c concurrently), which separates the pipeline executor from the extra hops; and by hand
   through the agent's proxy (b and c concurrently): every hop a pipeline takes but the gateway's own, the
   floor a gateway costing nothing would reach. N sequential requests each per round, taking turns in slices
   of 10, R rounds.

For every phase the CPU seconds (``/proc/PID/stat``) of the gateway, the agent, MLServer (all processes of
its session) and this client are recorded, so the CPU each request costs in each process is known; and the
gateway's RSS (``VmRSS``) idle, after each part, and its peak (``VmHWM``).

    .venv/bin/python bench/gateway_inference.py [--rounds 3] [--requests 300] [--pipeline-requests 150]
                                                [--clients 8] [--seconds 3] [--rows 2] [--quick] [--json PATH]
                                                [--workdir DIR] [--py-spy BIN [--profile-out PATH]]
                                                [--pipeline-only]

``--pipeline-only`` measures part 2 alone (an A/B of pipeline changes in a minute).

``--py-spy`` samples the gateway and the agent in an extra phase after the measurements (so the figures are not
slowed by it): gateway model throughput and sequential pipeline requests, and prints their top functions.
Every process is stopped by its PID.

Over 400 lines on purpose: one benchmark is one script read top to bottom (the stack, the ways of calling,
the measuring, the pipeline part, the report); what the benchmarks share is in bench_processes.py and tests/support/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_processes import (
    READY_TIMEOUT,
    REPO,
    MiB,
    StatusWatch,
    children_named,
    cpu_seconds,
    environment,
    hwm_bytes,
    kill_group_if_alive,
    load_request,
    rss_bytes,
    session_cpu_seconds,
    session_rss_bytes,
    source_fingerprint,
    spawn,
    spawn_agent,
    spawn_scheduler,
    stop_process,
    train_sample,
    wait_for_json,
    working_directory,
)
from grpc import aio
from load_model_rate import percentile, start_profiler, stop_profiler, summarize_profile

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.pipeline_models import class_models, three_step_pipeline  # the e2e test's models

PIPELINE = "abc"
MODELS = ("iris", "pa", "pb", "pc")
TARGETS = ("direct", "proxy", "gateway")
PIPELINE_WAYS = (
    "gateway_pipeline",
    "by_hand_direct_sequential",
    "by_hand_direct_concurrent",
    "by_hand_gateway",
    "by_hand_proxy_concurrent",
)
JSON_HEADERS = {"Content-Type": "application/json"}
LOAD_TIMEOUT = 120.0
# The ways take turns in slices this small (requests; a second of throughput), so drift hits each alike.
SLICE_REQUESTS = 25
SLICE_PIPELINE_REQUESTS = 10

Body = bytes
Call = Callable[[aiohttp.ClientSession], Awaitable[object]]
Run = Callable[[], Awaitable[tuple[list[float], int]]]  # one measured slice: (latencies, errors)


# --------------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    scheduler: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    mlserver_pid: int | None = None
    scheduler_listen: str = ""
    mlserver_url: str = ""
    proxy_url: str = ""
    gateway_url: str = ""
    exits: dict[str, Any] = field(default_factory=dict)

    def started(self) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
        """(gateway, agent) of a started stack."""
        if self.gateway is None or self.agent is None:
            raise RuntimeError("the stack is not started")
        return self.gateway, self.agent

    def stop(self) -> None:
        # The gateway first (nothing routes any more), then the agent (it unloads and stops its MLServer).
        if self.gateway is not None:
            self.exits["gateway"] = stop_process(self.gateway)
        if self.agent is not None:
            self.exits["agent"] = stop_process(self.agent)
        self.exits["scheduler"] = stop_process(self.scheduler)
        left = self.mlserver_pid is not None and kill_group_if_alive(self.mlserver_pid)
        self.exits["mlserver_left_running"] = left


def mlserver_http_url(agent_work: Path) -> str:
    """The agent's MLServer's own REST address, from the settings.json of the repository it launched."""
    for settings in sorted(agent_work.rglob("settings.json")):
        data: dict[str, Any] = json.loads(settings.read_text())
        if "http_port" in data:
            return f"http://{data.get('host', '127.0.0.1')}:{data['http_port']}"
    raise RuntimeError(f"no MLServer settings.json with an http_port under {agent_work}")


async def wait_http_ok(url: str, timeout: float) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
        while True:
            with_status = 0
            try:
                async with session.get(url) as response:
                    with_status = response.status
            except aiohttp.ClientError:
                pass
            if with_status == 200:
                return
            await asyncio.sleep(0.1)


async def start_stack(work: Path, iris: Path, b_folder: Path, c_folder: Path) -> Stack:
    """Scheduler, agent (+ MLServer), gateway; models iris, pa (both the iris sample), pb, pc; pipeline abc."""
    stack = Stack(spawn_scheduler(work, work / "scheduler.json"))
    try:
        addresses = await wait_for_json(work / "scheduler.json", stack.scheduler, 30, "scheduler")
        stack.scheduler_listen = addresses["listen"]
        stack.agent = spawn_agent(work, addresses["agent_listen"], work / "agent.json")
        proxy = await wait_for_json(work / "agent.json", stack.agent, READY_TIMEOUT, "agent")
        stack.proxy_url = f"http://{proxy['http']}"
        mlservers = children_named(stack.agent.pid, "mlserver")
        stack.mlserver_pid = mlservers[0] if mlservers else None
        stack.mlserver_url = mlserver_http_url(work / "agent")
        stack.gateway = spawn(
            [
                "gateway",
                f"--scheduler={stack.scheduler_listen}",
                "--listen=127.0.0.1:0",
                f"--ready-file={work}/gw.json",
            ],
            work / "gateway.log",
        )
        gateway = await wait_for_json(work / "gw.json", stack.gateway, 60, "gateway")
        stack.gateway_url = f"http://{gateway['listen']}"
        folders = {"iris": iris, "pa": iris, "pb": b_folder, "pc": c_folder}
        async with aio.insecure_channel(stack.scheduler_listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            watch = StatusWatch(stub, "bench-gateway-inference")
            try:
                for name in MODELS:
                    await stub.LoadModel(load_request(name, folders[name]), timeout=30)
                for name in MODELS:
                    await watch.wait_available(name, LOAD_TIMEOUT)
            finally:
                await watch.close()
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=three_step_pipeline(PIPELINE)), timeout=30)
        for name in MODELS:
            await wait_http_ok(f"{stack.gateway_url}/v2/models/{name}/ready", 60)
        await wait_http_ok(f"{stack.gateway_url}/v2/pipelines/{PIPELINE}/ready", 60)
    except BaseException:
        stack.stop()
        raise
    return stack


# --------------------------------------------------------------------------------------------- requests


class RequestFailedError(Exception):
    pass


async def post(session: aiohttp.ClientSession, url: str, body: Body) -> dict[str, Any]:
    async with session.post(url, data=body, headers=JSON_HEADERS) as response:
        payload = await response.read()
        if response.status != 200:
            raise RequestFailedError(f"{url}: HTTP {response.status}: {payload[:300]!r}")
    answer: dict[str, Any] = json.loads(payload)
    return answer


def follow_up(answer: dict[str, Any]) -> Body:
    """The request b and c get by hand: a's output tensor, as the pipeline passes it on."""
    [tensor] = answer["outputs"]
    return json.dumps({"inputs": [{k: tensor[k] for k in ("name", "shape", "datatype", "data")}]}).encode()


@dataclass
class Ways:
    """The requests each measured way sends; each call checks nothing but HTTP 200 (answers were checked once)."""

    body: Body
    urls: dict[str, str]
    mlserver: str
    gateway: str
    proxy: str

    def model_call(self, target: str) -> Call:
        url = self.urls[target]

        async def call(session: aiohttp.ClientSession) -> None:
            await post(session, url, self.body)

        return call

    async def by_hand(self, session: aiohttp.ClientSession, base: str, suffix: str, concurrent: bool) -> Any:
        a = await post(session, f"{base}/v2/models/pa{suffix}/infer", self.body)
        second = follow_up(a)
        b_url, c_url = f"{base}/v2/models/pb{suffix}/infer", f"{base}/v2/models/pc{suffix}/infer"
        if concurrent:
            b, c = await asyncio.gather(post(session, b_url, second), post(session, c_url, second))
        else:
            b = await post(session, b_url, second)
            c = await post(session, c_url, second)
        return {"b_predict": b["outputs"][0]["data"], "c_predict": c["outputs"][0]["data"]}

    async def pipeline(self, session: aiohttp.ClientSession) -> Any:
        answer = await post(session, f"{self.gateway}/v2/pipelines/{PIPELINE}/infer", self.body)
        return {tensor["name"]: tensor["data"] for tensor in answer["outputs"]}

    def pipeline_call(self, way: str) -> Call:
        calls: dict[str, Callable[[aiohttp.ClientSession], Awaitable[Any]]] = {
            "gateway_pipeline": self.pipeline,
            "by_hand_direct_sequential": lambda s: self.by_hand(s, self.mlserver, "_1", concurrent=False),
            "by_hand_direct_concurrent": lambda s: self.by_hand(s, self.mlserver, "_1", concurrent=True),
            "by_hand_gateway": lambda s: self.by_hand(s, self.gateway, "", concurrent=True),
            # The floor of a pipeline through the gateway: the same calls with every hop it takes but its own.
            "by_hand_proxy_concurrent": lambda s: self.by_hand(s, self.proxy, "", concurrent=True),
        }
        return calls[way]


# --------------------------------------------------------------------------------------------- measuring


@dataclass
class Watched:
    """The processes whose CPU time each phase records."""

    gateway: int
    agent: int
    mlserver: int | None
    scheduler: int

    def cpu(self) -> dict[str, float]:
        return {
            "gateway": cpu_seconds(self.gateway),
            "agent": cpu_seconds(self.agent),
            "mlserver": session_cpu_seconds(self.mlserver) if self.mlserver is not None else 0.0,
            "scheduler": cpu_seconds(self.scheduler),
            "client": cpu_seconds(os.getpid()),
        }


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 3),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 3),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3) if ordered else None,
        "max_ms": round(ordered[-1] * 1000, 3) if ordered else None,
    }


async def phase(watched: Watched, run: Run) -> tuple[list[float], dict[str, Any]]:
    """Run one measured phase; returns its latencies and {wall, requests, errors, cpu seconds per process}."""
    before = watched.cpu()
    started = time.perf_counter()
    latencies, errors = await run()
    wall = time.perf_counter() - started
    after = watched.cpu()
    cpu = {name: round(after[name] - before[name], 3) for name in before}
    return latencies, {"wall_s": round(wall, 3), "requests": len(latencies), "errors": errors, "cpu_s": cpu}


async def timed(session: aiohttp.ClientSession, call: Call, latencies: list[float]) -> bool:
    """One request; its latency is appended if it answered 200. False if it failed."""
    started = time.perf_counter()
    try:
        await call(session)
    except (RequestFailedError, aiohttp.ClientError):
        return False
    latencies.append(time.perf_counter() - started)
    return True


def sequential(session: aiohttp.ClientSession, call: Call, count: int) -> Run:
    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        for _ in range(count):
            errors += not await timed(session, call, latencies)
        return latencies, errors

    return run


def closed_loop(session: aiohttp.ClientSession, call: Call, clients: int, seconds: float) -> Run:
    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                errors += not await timed(session, call, latencies)

        await asyncio.gather(*(client() for _ in range(clients)))
        return latencies, errors

    return run


def rotated(items: Sequence[str], turn: int) -> list[str]:
    start = turn % len(items)
    return [*items[start:], *items[:start]]


@dataclass
class Config:
    rounds: int
    requests: int
    pipeline_requests: int
    clients: int
    seconds: float
    workdir: Path
    py_spy: str | None
    profile_out: Path | None
    pipeline_only: bool = False


def per_process_ms(cpu: dict[str, float], requests: int) -> dict[str, float | None]:
    return {name: round(1000 * value / requests, 3) if requests else None for name, value in cpu.items()}


def combine(parts: list[dict[str, Any]], latencies: list[float]) -> dict[str, Any]:
    """Pool a way's rounds: latency percentiles over every request, CPU per request per process."""
    requests = sum(part["requests"] for part in parts)
    wall = sum(part["wall_s"] for part in parts)
    cpu = {name: round(sum(part["cpu_s"][name] for part in parts), 3) for name in parts[0]["cpu_s"]}
    return {
        "latency": latency_summary(latencies),
        "requests": requests,
        "errors": sum(part["errors"] for part in parts),
        "requests_per_s": round(requests / wall, 1) if wall else None,
        "cpu_s": cpu,
        "cpu_ms_per_request": per_process_ms(cpu, requests),
        "rounds": parts,
    }


PhaseRunner = Callable[[Run], Awaitable[tuple[list[float], dict[str, Any]]]]


async def measure_ways(
    ways: Sequence[str], rounds: int, slices: int, run_phase: PhaseRunner, make_slice: Callable[[str], Run]
) -> dict[str, Any]:
    """R rounds; in each, every way runs ``slices`` short slices, the ways taking turns slice by slice (the
    order rotating), so a change of the machine's load hits every way alike. ``run_phase`` runs one slice and
    measures it (latencies, and a part with wall_s, errors and cpu_s). Figures per round and pooled."""
    parts: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    pooled: dict[str, list[float]] = {way: [] for way in ways}
    for turn in range(rounds):
        latencies: dict[str, list[float]] = {way: [] for way in ways}
        slices_of: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
        for index in range(slices):
            for way in rotated(ways, turn + index):
                found, part = await run_phase(make_slice(way))
                latencies[way].extend(found)
                slices_of[way].append(part)
        for way in ways:
            part = {
                "round": turn + 1,
                "wall_s": round(sum(p["wall_s"] for p in slices_of[way]), 3),
                "requests": len(latencies[way]),
                "errors": sum(p["errors"] for p in slices_of[way]),
                "cpu_s": {k: round(sum(p["cpu_s"][k] for p in slices_of[way]), 3) for k in slices_of[way][0]["cpu_s"]},
                "latency": latency_summary(latencies[way]),
            }
            parts[way].append(part)
            pooled[way].extend(latencies[way])
    return {way: combine(parts[way], pooled[way]) for way in ways}


async def measure_sequential(
    session: aiohttp.ClientSession,
    names: Sequence[str],
    *,
    requests: int,
    slice_size: int,
    call_of: Callable[[str], Call],
    config: Config,
    watched: Watched,
) -> dict[str, Any]:
    """``requests`` sequential requests per way and round, the ways taking turns every ``slice_size``."""
    chunk = min(slice_size, requests)
    return await measure_ways(
        names,
        config.rounds,
        max(1, requests // chunk),
        lambda run: phase(watched, run),
        lambda name: sequential(session, call_of(name), chunk),
    )


def ratios(result: dict[str, Any], over: str, under: str, keys: Sequence[str]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    found = {key: ratio(result[over]["latency"][key], result[under]["latency"][key]) for key in keys}
    found["per_round_p50"] = [  # type: ignore[assignment]
        ratio(a["latency"]["p50_ms"], b["latency"]["p50_ms"])
        for a, b in zip(result[over]["rounds"], result[under]["rounds"], strict=True)
    ]
    return found


async def check_answers(session: aiohttp.ClientSession, ways: Ways, expected: list[int]) -> dict[str, Any]:
    """One untimed request each way: the model answers what scikit-learn predicts, the pipeline what the calls
    by hand give (c = (k + 1) % 3, b = 2k + 1)."""
    checks: dict[str, Any] = {}
    for target in TARGETS:
        answer = await post(session, ways.urls[target], ways.body)
        checks[target] = answer["outputs"][0]["data"] == expected
    answers: dict[str, Any] = {way: await ways.pipeline_call(way)(session) for way in PIPELINE_WAYS}
    reference = answers["by_hand_direct_sequential"]
    for way, answer in answers.items():
        checks[way] = answer == reference
    checks["pipeline_values"] = reference["c_predict"] == [(k + 1) % 3 for k in expected] and all(
        abs(b - (2 * k + 1)) < 1e-6 for b, k in zip(reference["b_predict"], expected, strict=True)
    )
    return checks


async def measure(stack: Stack, config: Config, request: dict[str, Any], expected: list[int]) -> dict[str, Any]:
    gateway, agent = stack.started()
    watched = Watched(gateway.pid, agent.pid, stack.mlserver_pid, stack.scheduler.pid)
    ways = Ways(
        json.dumps(request).encode(),
        {
            "direct": f"{stack.mlserver_url}/v2/models/iris_1/infer",
            "proxy": f"{stack.proxy_url}/v2/models/iris/infer",
            "gateway": f"{stack.gateway_url}/v2/models/iris/infer",
        },
        stack.mlserver_url,
        stack.gateway_url,
        stack.proxy_url,
    )
    gateway_pid = gateway.pid
    result: dict[str, Any] = {"gateway_rss_bytes": {"idle": rss_bytes(gateway_pid)}}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        result["checks"] = await check_answers(session, ways, expected)

        async def in_turns(names: Sequence[str], requests: int, size: int, call_of: Callable[[str], Call]) -> Any:
            return await measure_sequential(
                session, names, requests=requests, slice_size=size, call_of=call_of, config=config, watched=watched
            )

        for target in TARGETS:  # warm-up: connections open, first-request paths taken
            await sequential(session, ways.model_call(target), 50)()
        for way in PIPELINE_WAYS:
            await sequential(session, ways.pipeline_call(way), 20)()

        if not config.pipeline_only:
            result["model_latency"] = await in_turns(TARGETS, config.requests, SLICE_REQUESTS, ways.model_call)
            slices = max(1, round(config.seconds))
            result["model_throughput"] = await measure_ways(
                TARGETS,
                config.rounds,
                slices,
                lambda run: phase(watched, run),
                lambda t: closed_loop(session, ways.model_call(t), config.clients, config.seconds / slices),
            )
            result["gateway_rss_bytes"]["after_model_part"] = rss_bytes(gateway_pid)
        pipeline_requests, pipeline_call = config.pipeline_requests, ways.pipeline_call
        result["pipeline_latency"] = await in_turns(
            PIPELINE_WAYS, pipeline_requests, SLICE_PIPELINE_REQUESTS, pipeline_call
        )
        result["gateway_rss_bytes"]["after_pipeline_part"] = rss_bytes(gateway_pid)
        result["gateway_rss_bytes"]["peak_hwm"] = hwm_bytes(gateway_pid)
        if config.py_spy is not None:
            result.update(await profile_gateway(config.py_spy, session, ways, config, watched))

    keys = ("p50_ms", "p90_ms", "p99_ms")
    pipe = result["pipeline_latency"]
    result["ratios"] = {}
    if not config.pipeline_only:
        lat, thr = result["model_latency"], result["model_throughput"]
        result["ratios"] = {
            "latency_gateway_to_direct": ratios(lat, "gateway", "direct", keys),
            "latency_proxy_to_direct": ratios(lat, "proxy", "direct", keys),
            "throughput_gateway_to_direct": round(
                thr["gateway"]["requests_per_s"] / thr["direct"]["requests_per_s"], 3
            ),
            "throughput_proxy_to_direct": round(thr["proxy"]["requests_per_s"] / thr["direct"]["requests_per_s"], 3),
        }
    result["ratios"] |= {
        "pipeline_to_by_hand_direct_sequential": ratios(pipe, "gateway_pipeline", "by_hand_direct_sequential", keys),
        "pipeline_to_by_hand_direct_concurrent": ratios(pipe, "gateway_pipeline", "by_hand_direct_concurrent", keys),
        "pipeline_to_by_hand_gateway": ratios(pipe, "gateway_pipeline", "by_hand_gateway", keys),
        "pipeline_to_by_hand_proxy_concurrent": ratios(pipe, "gateway_pipeline", "by_hand_proxy_concurrent", keys),
        "by_hand_proxy_concurrent_to_by_hand_direct_sequential": ratios(
            pipe, "by_hand_proxy_concurrent", "by_hand_direct_sequential", keys
        ),
    }
    return result


async def profile_gateway(
    py_spy: str, session: aiohttp.ClientSession, ways: Ways, config: Config, watched: Watched
) -> dict[str, dict[str, Any]]:
    """py-spy on the gateway and on the agent (its inference proxy: the second hop of every gateway request) at
    once, during gateway model throughput, then sequential pipeline requests (figures not kept)."""
    out = config.profile_out or config.workdir / "gateway-profile.txt"
    agent_out = out.with_name(f"{out.stem}-agent{out.suffix}")
    profilers = [start_profiler(py_spy, watched.gateway, out), start_profiler(py_spy, watched.agent, agent_out)]
    try:
        await asyncio.sleep(1.0)  # py-spy attaches
        if not config.pipeline_only:
            await closed_loop(session, ways.model_call("gateway"), config.clients, 2 * config.seconds)()
        await sequential(session, ways.pipeline_call("gateway_pipeline"), 2 * config.pipeline_requests)()
    finally:
        for profiler in profilers:
            stop_profiler(profiler)
    return {
        "profile": {"raw": str(out), **summarize_profile(out, top=25)},
        "agent_profile": {"raw": str(agent_out), **summarize_profile(agent_out, top=25)},
    }


# --------------------------------------------------------------------------------------------- the run


async def benchmark(config: Config, request: dict[str, Any], expected: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "environment": await asyncio.to_thread(environment),
        "config": {
            "rounds": config.rounds,
            "requests": config.requests,
            "pipeline_requests": config.pipeline_requests,
            "clients": config.clients,
            "seconds": config.seconds,
            "rows": len(expected),
            "pipeline_only": config.pipeline_only,
            "request_body_bytes": len(json.dumps(request)),
        },
        "code": await asyncio.to_thread(code_fingerprint),
    }
    b_folder, c_folder = class_models(config.workdir / "models")
    stack = await start_stack(config.workdir / "stack", config.workdir / "iris", b_folder, c_folder)
    try:
        result.update(await measure(stack, config, request, expected))
        result["agent_rss_bytes"] = rss_bytes(stack.started()[1].pid)
        if stack.mlserver_pid is not None:
            result["mlserver_rss_bytes"], result["mlserver_processes"] = session_rss_bytes(stack.mlserver_pid)
    finally:
        stack.stop()
    result["exits"] = stack.exits
    log = (config.workdir / "stack" / "gateway.log").read_text(errors="replace").splitlines()
    result["gateway_log_warnings"] = [line for line in log if "WARNING" in line or "ERROR" in line][:20]
    result["environment"]["loadavg_end"] = os.getloadavg()[0]
    return result


def render(result: dict[str, Any]) -> str:
    env, cfg = result["environment"], result["config"]
    lines = [
        f"nproc {env['nproc']}, Python {env['python']}, {env['mlserver']}, load average "
        f"{env['loadavg_start']:.2f} -> {env['loadavg_end']:.2f}; {cfg['rounds']} rounds; gateway + agent proxy "
        f"source {result['code']['sha256_12']} (newest file {result['code']['newest_mtime_utc']})",
        "",
        f"(1) one model (iris), {cfg['rows']} rows ({cfg['request_body_bytes']} bytes) per request; "
        f"{cfg['requests']} sequential requests per round; "
        f"{cfg['clients']} clients x {cfg['seconds']:g} s per round",
        f"{'way':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  {'p50 per round':<24} {'req/s':>7} "
        f"{'req/s per round':<22} {'gw / agent / mlserver / client CPU ms per req (throughput)'}",
    ]
    for target in TARGETS if "model_latency" in result else ():
        lat, thr = result["model_latency"][target], result["model_throughput"][target]
        per_round = " ".join(f"{part['latency']['p50_ms']:.2f}" for part in lat["rounds"])
        rates = " ".join(f"{part['requests'] / part['wall_s']:.0f}" for part in thr["rounds"])
        cpu = thr["cpu_ms_per_request"]
        lines.append(
            f"{target:<10} {lat['latency']['p50_ms']:>8.2f} {lat['latency']['p90_ms']:>8.2f} "
            f"{lat['latency']['p99_ms']:>8.2f}  {per_round:<24} {thr['requests_per_s']:>7.0f} {rates:<22} "
            f"{cpu['gateway']:.2f} / {cpu['agent']:.2f} / {cpu['mlserver']:.2f} / {cpu['client']:.2f}"
        )
    lines += [
        "",
        f"(2) pipeline {PIPELINE} (pa -> pb, pa -> pc, join), {cfg['pipeline_requests']} sequential requests per round",
        f"{'way':<26} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  {'p50 per round':<24} gateway CPU ms/req",
    ]
    for way in PIPELINE_WAYS:
        lat = result["pipeline_latency"][way]
        per_round = " ".join(f"{part['latency']['p50_ms']:.2f}" for part in lat["rounds"])
        lines.append(
            f"{way:<26} {lat['latency']['p50_ms']:>8.2f} {lat['latency']['p90_ms']:>8.2f} "
            f"{lat['latency']['p99_ms']:>8.2f}  {per_round:<24} {lat['cpu_ms_per_request']['gateway']:.2f}"
        )
    lines += ["", "ratios (p50 / p90 / p99; per-round p50):"]
    for name, value in result["ratios"].items():
        if isinstance(value, dict):
            shown = f"{value['p50_ms']} / {value['p90_ms']} / {value['p99_ms']}; rounds {value['per_round_p50']}"
        else:
            shown = str(value)
        lines.append(f"  {name:<40} {shown}")
    gw = result["gateway_rss_bytes"]
    lines += [
        "",
        f"gateway RSS: idle {gw['idle'] / MiB:.1f} MiB, after (1) {gw.get('after_model_part', 0) / MiB:.1f}, after (2) "
        f"{gw['after_pipeline_part'] / MiB:.1f}, peak {gw['peak_hwm'] / MiB:.1f} MiB; agent "
        f"{result['agent_rss_bytes'] / MiB:.1f} MiB; MLServer {result.get('mlserver_rss_bytes', 0) / MiB:.1f} MiB",
        f"gateway CPU s: latency part {gateway_cpu(result, 'model_latency'):.2f}, "
        f"throughput part {gateway_cpu(result, 'model_throughput'):.2f}, "
        f"pipeline part {gateway_cpu(result, 'pipeline_latency'):.2f}",
        f"errors: {errors_of(result)}; checks {result['checks']}; exits {result['exits']}",
    ]
    for key, process in (("profile", "gateway"), ("agent_profile", "agent")):
        if key in result:
            lines += ["", f"{process} profile ({result[key].get('samples')} samples), inclusive %:"]
            lines += [f"  {share:5.1f}  {frame}" for frame, share in result[key].get("inclusive_percent", [])]
    return "\n".join(lines)


def gateway_cpu(result: dict[str, Any], part: str) -> float:
    """The gateway's CPU seconds over every way of a part (0 for a part not measured: --pipeline-only)."""
    return float(sum(way["cpu_s"]["gateway"] for way in result.get(part, {}).values()))


def errors_of(result: dict[str, Any]) -> int:
    parts = ("model_latency", "model_throughput", "pipeline_latency")
    return sum(way["errors"] for part in parts for way in result.get(part, {}).values())


# --------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="V2 inference through the gateway vs straight to MLServer.")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--requests", type=int, default=300, help="sequential model requests per way and round")
    parser.add_argument("--pipeline-requests", type=int, default=150, help="sequential pipeline requests per way/round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the throughput part (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per way and round of throughput")
    parser.add_argument(
        "--rows", type=int, default=2, help="flowers per request (default 2: the sample's request as it is)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 50 requests, 1 s")
    parser.add_argument(
        "--pipeline-only", action="store_true", help="measure only part (2), the pipeline against the calls by hand"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep logs in a new folder in DIR (default: temporary, removed)")
    parser.add_argument("--py-spy", metavar="BIN", help="profile the gateway and agent with this py-spy (extra phase)")
    parser.add_argument("--profile-out", type=Path, metavar="PATH", help="py-spy's raw output (default: in workdir)")
    options = parser.parse_args(argv)
    if options.quick:
        options.rounds, options.requests, options.pipeline_requests, options.seconds = 2, 50, 30, 1.0
    if not (1 <= options.rounds <= 20 and 1 <= options.clients <= 256 and options.requests >= 1):
        parser.error("--rounds 1..20, --clients 1..256, --requests >= 1")
    if not 1 <= options.rows <= 100_000:
        parser.error("--rows must be from 1 to 100000")
    return options


def scaled(request: dict[str, Any], expected: list[int], rows: int) -> tuple[dict[str, Any], list[int]]:
    """The sample's request with ``rows`` flowers (its own, repeated), and the classes expected for them."""
    [tensor] = request["inputs"]
    flowers = tensor["data"]
    data = [flowers[i % len(flowers)] for i in range(rows)]
    bigger = {"inputs": [{**tensor, "shape": [rows, len(flowers[0])], "data": data}]}
    return bigger, [expected[i % len(expected)] for i in range(rows)]


def code_fingerprint() -> dict[str, Any]:
    """Which gateway and agent-proxy source was measured."""
    return source_fingerprint([*sorted((REPO / "gateway").glob("*.py")), REPO / "agent" / "inference_proxy.py"])


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    with working_directory(options.workdir, "gateway-inference") as workdir:
        printed = train_sample(workdir / "iris")
        (workdir / "stack").mkdir()
        config = Config(
            options.rounds,
            options.requests,
            options.pipeline_requests,
            options.clients,
            options.seconds,
            workdir,
            options.py_spy,
            options.profile_out,
            options.pipeline_only,
        )
        request, expected = scaled(printed["request"], printed["expected"], options.rows)
        result = asyncio.run(benchmark(config, request, expected))
    print(render(result))
    if options.json is not None:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    healthy = all(result["checks"].values()) and not errors_of(result) and not result["exits"]["mlserver_left_running"]
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
