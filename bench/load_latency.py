"""Model load latency: LoadModel to ModelAvailable through modelplane vs MLServer's own repository load.

What it measures, in one run on this machine (see bench/README.md for why, and recorded results):

(b) Direct MLServer, the baseline. An MLServer started with ``servers.launch.launch_mlserver`` (the same
    launcher and settings the agent uses). For each of N distinct names the model folder is placed in its
    repository by hand (the sample's ``model.joblib`` plus the ``model-settings.json`` the agent would
    write), then ``POST /v2/repository/models/{name}/load`` is timed, one model at a time. Run before and
    after (a), each time with a fresh MLServer, so drift of a shared machine shows.
(a) modelplane. A ``modelplane scheduler`` process and one ``modelplane agent --launch-server`` process
    (which starts its own MLServer). With a SubscribeModelStatus stream open, N distinct models (the same
    sample, from its local folder) are loaded one at a time; each is timed from the LoadModel call until
    the stream shows its latest version ModelAvailable. The agent's own log line ("loaded NAME in Xs")
    gives the part spent in the agent.

Reported: medians (and first / min / max) of both, the ratio (a) / (b) with (b) the mean of the two
direct medians, the paired overhead (the k-th modelplane load minus the mean of the k-th direct loads:
MLServer's own load time grows with the number of models it holds), the agent's RSS (VmRSS from
/proc/PID/status) once registered and idle and after the N models are Available, and the RSS of both
MLServers for context.

    .venv/bin/python bench/load_latency.py [--models 20] [--quick] [--json PATH] [--workdir DIR]

Everything listens on 127.0.0.1 ports picked by the kernel; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_processes import (
    READY_TIMEOUT,
    MiB,
    StatusWatch,
    children_named,
    environment,
    hwm_bytes,
    kill_group_if_alive,
    load_request,
    rss_bytes,
    session_rss_bytes,
    spawn_agent,
    spawn_scheduler,
    stop_process,
    train_sample,
    wait_for_json,
    working_directory,
)
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from servers.adapter import ModelFiles
from servers.launch import LocalServer, launch_mlserver
from servers.mlserver import SETTINGS_FILE, model_settings

LOAD_TIMEOUT = 120.0
AGENT_LOADED = re.compile(r"\bloaded (\S+)_(\d+) in ([0-9.]+)s")


# --------------------------------------------------------------------------------------------- helpers


def summary(seconds: Sequence[float]) -> dict[str, Any]:
    ms = [round(value * 1000, 1) for value in seconds]
    return {
        "count": len(ms),
        "median_ms": round(statistics.median(ms), 1) if ms else None,
        "median_ms_without_first": round(statistics.median(ms[1:]), 1) if len(ms) > 1 else None,
        "first_ms": ms[0] if ms else None,
        "min_ms": min(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
        "all_ms": ms,
    }


async def infer_ok(http_url: str, name: str, request: dict[str, Any], expected: list[int]) -> bool:
    """One (untimed) inference, to check that what was loaded answers correctly."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(f"{http_url}/v2/models/{name}/infer", json=request) as response,
    ):
        answer = await response.json(content_type=None)
        return response.status == 200 and answer["outputs"][0]["data"] == expected


# --------------------------------------------------------------------------------------------- (b) direct


@dataclass
class Config:
    models: int
    workdir: Path
    sample_dir: Path
    request: dict[str, Any]
    expected: list[int]


async def direct_run(config: Config, label: str) -> dict[str, Any]:
    """(b): place N model folders in a fresh MLServer's repository and time each repository load."""
    work = config.workdir / label
    server: LocalServer = await launch_mlserver(work, ready_timeout=READY_TIMEOUT)
    try:
        idle_rss, _ = session_rss_bytes(server.pid)
        times: list[float] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for index in range(config.models):
                files = ModelFiles(
                    name=f"direct-{index:02d}",
                    version=1,
                    artifact_dir=config.sample_dir,
                    requirements=frozenset({"sklearn"}),
                )
                target = server.repository / files.loaded_name
                shutil.copytree(config.sample_dir, target, ignore=shutil.ignore_patterns("model.yaml"))
                (target / SETTINGS_FILE).write_text(json.dumps(model_settings(files), indent=2) + "\n")
                started = time.perf_counter()
                async with session.post(
                    f"{server.http_url}/v2/repository/models/{files.loaded_name}/load",
                    json={},
                    timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT),
                ) as response:
                    body = await response.text()
                    elapsed = time.perf_counter() - started
                if response.status != 200:
                    raise RuntimeError(f"MLServer refused {files.loaded_name}: HTTP {response.status}: {body[:500]}")
                times.append(elapsed)
        loaded_rss, processes = session_rss_bytes(server.pid)
        serves = await infer_ok(server.http_url, f"direct-{config.models - 1:02d}_1", config.request, config.expected)
    finally:
        status = await server.stop()
    return {
        "load": summary(times),
        "inference_check_ok": serves,
        "mlserver_rss_bytes": {"idle": idle_rss, "loaded": loaded_rss, "processes": processes},
        "mlserver_exit_status": status,
    }


# --------------------------------------------------------------------------------------------- (a) modelplane


async def modelplane_run(config: Config) -> dict[str, Any]:
    """(a): scheduler + agent (--launch-server) processes; N LoadModels one at a time, each to ModelAvailable."""
    work = config.workdir / "modelplane"
    work.mkdir(parents=True)
    scheduler_ready, agent_ready = work / "scheduler.json", work / "agent.json"
    scheduler = spawn_scheduler(work, scheduler_ready)
    agent: subprocess.Popen[bytes] | None = None
    mlserver_pids: list[int] = []
    result: dict[str, Any] = {}
    try:
        addresses = await wait_for_json(scheduler_ready, scheduler, 30, "scheduler")
        agent = spawn_agent(work, addresses["agent_listen"], agent_ready)
        proxy = await wait_for_json(agent_ready, agent, READY_TIMEOUT, "agent")
        mlserver_pids = children_named(agent.pid, "mlserver")
        await asyncio.sleep(2.0)  # idle: registered, nothing loaded
        rss = {"agent_idle": rss_bytes(agent.pid)}
        if mlserver_pids:
            rss["agent_mlserver_idle"] = session_rss_bytes(mlserver_pids[0])[0]
        scheduler_idle = rss_bytes(scheduler.pid)

        totals: list[float] = []
        acks: list[float] = []
        names = [f"mp-{index:02d}" for index in range(config.models)]
        async with aio.insecure_channel(addresses["listen"]) as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
            stub = pb_grpc.SchedulerStub(channel)
            watch = StatusWatch(stub)
            try:
                for name in names:
                    started = time.perf_counter()
                    await stub.LoadModel(load_request(name, config.sample_dir), timeout=30)
                    acks.append(time.perf_counter() - started)
                    totals.append(await watch.wait_available(name, LOAD_TIMEOUT) - started)
            finally:
                await watch.close()
        rss["agent_loaded"] = rss_bytes(agent.pid)
        await asyncio.sleep(2.0)
        rss["agent_loaded_plus_2s"] = rss_bytes(agent.pid)
        rss["agent_peak_hwm"] = hwm_bytes(agent.pid)
        mlserver_processes = 0
        if mlserver_pids:
            rss["agent_mlserver_loaded"], mlserver_processes = session_rss_bytes(mlserver_pids[0])
        serves = await infer_ok(f"http://{proxy['http']}", names[-1], config.request, config.expected)
        result = {
            "load_to_available": summary(totals),
            "load_model_ack": summary(acks),
            "inference_check_ok": serves,
            "rss_bytes": rss,
            "mlserver_processes": mlserver_processes,
            "scheduler_rss_bytes": {"idle": scheduler_idle, "loaded": rss_bytes(scheduler.pid)},
        }
    finally:
        if agent is not None:
            result["agent_exit"] = stop_process(agent)
        result["scheduler_exit"] = stop_process(scheduler)
        result["mlserver_left_running"] = [pid for pid in mlserver_pids if kill_group_if_alive(pid)]
    agent_times = {
        match.group(1): float(match.group(3))
        for match in AGENT_LOADED.finditer((work / "agent.log").read_text(errors="replace"))
    }
    result["agent_handle"] = summary([agent_times[name] for name in names if name in agent_times])
    return result


# --------------------------------------------------------------------------------------------- the run


async def benchmark(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = {"environment": await asyncio.to_thread(environment), "models": config.models}
    result["direct_before"] = await direct_run(config, "direct-before")
    result["modelplane"] = await modelplane_run(config)
    result["direct_after"] = await direct_run(config, "direct-after")
    result["environment"]["loadavg_end"] = os.getloadavg()[0]
    direct = statistics.mean(
        [result["direct_before"]["load"]["median_ms"], result["direct_after"]["load"]["median_ms"]]
    )
    result["direct_median_ms_mean"] = round(direct, 1)
    result["ratio_modelplane_to_direct"] = round(result["modelplane"]["load_to_available"]["median_ms"] / direct, 2)
    # MLServer's load time grows with the number of models it already holds, so compare like with like: the
    # k-th modelplane load against the mean of the two k-th direct loads (the first, cold, load left out).
    pairs = zip(
        result["modelplane"]["load_to_available"]["all_ms"][1:],
        result["direct_before"]["load"]["all_ms"][1:],
        result["direct_after"]["load"]["all_ms"][1:],
        strict=True,
    )
    extra = [mp - (before + after) / 2 for mp, before, after in pairs]
    result["paired_overhead_ms_median"] = round(statistics.median(extra), 1) if extra else None
    return result


def render(result: dict[str, Any]) -> str:
    env, mp = result["environment"], result["modelplane"]
    before, after = result["direct_before"], result["direct_after"]
    rss = mp["rss_bytes"]

    def mib(value: int | None) -> str:
        return "n/a" if value is None else f"{value / MiB:.1f} MiB"

    def times(part: dict[str, Any]) -> str:
        return (
            f"median {part['median_ms']} ms (without the first {part['median_ms_without_first']}), "
            f"first {part['first_ms']}, min {part['min_ms']}, max {part['max_ms']}"
        )

    rows = [
        ("machine", f"nproc {env['nproc']}, Python {env['python']}, {env['mlserver']}, load average "
                    f"{env['loadavg_start']:.2f} -> {env['loadavg_end']:.2f}"),
        ("models", f"{result['models']} distinct names, loaded one at a time (the iris sample)"),
        ("(b) MLServer load, before", times(before["load"])),
        ("(b) MLServer load, after", times(after["load"])),
        ("(a) modelplane load->Available", times(mp["load_to_available"])),
        ("    LoadModel ack", times(mp["load_model_ack"])),
        ("    agent's own handling", times(mp["agent_handle"])),
        ("ratio (a) / (b)", f"{result['ratio_modelplane_to_direct']}  ((b) = mean of the two medians, "
                            f"{result['direct_median_ms_mean']} ms)"),
        ("paired overhead (a) - (b)", f"median {result['paired_overhead_ms_median']} ms per load (k-th load vs "
                                      "k-th direct loads, first left out)"),
        ("agent RSS", f"{mib(rss.get('agent_idle'))} idle after registering, {mib(rss.get('agent_loaded'))} with "
                      f"{result['models']} models, {mib(rss.get('agent_loaded_plus_2s'))} 2 s later, "
                      f"peak {mib(rss.get('agent_peak_hwm'))}"),
        ("agent's MLServer RSS", f"{mib(rss.get('agent_mlserver_idle'))} idle, "
                                 f"{mib(rss.get('agent_mlserver_loaded'))} loaded "
                                 f"({mp['mlserver_processes']} process(es))"),
        ("direct MLServer RSS", f"{mib(before['mlserver_rss_bytes']['idle'])} idle, "
                                f"{mib(before['mlserver_rss_bytes']['loaded'])} loaded (before); "
                                f"{mib(after['mlserver_rss_bytes']['loaded'])} loaded (after)"),
        ("scheduler RSS", f"{mib(mp['scheduler_rss_bytes']['idle'])} idle, "
                          f"{mib(mp['scheduler_rss_bytes']['loaded'])} loaded"),
        ("checks", f"inference ok: direct {before['inference_check_ok']}/{after['inference_check_ok']}, "
                   f"modelplane {mp['inference_check_ok']}; exits: agent {mp['agent_exit']}, "
                   f"scheduler {mp['scheduler_exit']}; MLServer left running: {mp['mlserver_left_running']}"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# --------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Model load latency: modelplane vs a direct MLServer load.")
    parser.add_argument("--models", type=int, default=None, help="distinct models per part (default 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 models per part")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and state in a new folder in DIR (default: a temporary dir, removed)"
    )
    options = parser.parse_args(argv)
    if options.models is None:
        options.models = 5 if options.quick else 20
    if not 1 <= options.models <= 100:
        parser.error("--models must be from 1 to 100")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    with working_directory(options.workdir, "load-latency") as workdir:
        printed = train_sample(workdir / "iris")
        config = Config(options.models, workdir, workdir / "iris", printed["request"], printed["expected"])
        result = asyncio.run(benchmark(config))
    print(render(result))
    if options.json is not None:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    checks = [result["direct_before"], result["direct_after"], result["modelplane"]]
    healthy = all(part["inference_check_ok"] for part in checks) and not result["modelplane"]["mlserver_left_running"]
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
