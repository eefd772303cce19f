"""Our MLServer runtime for trained designs vs MLServer's stock scikit-learn runtime: the same estimator, one server.

What it measures (see bench/README.md for why, and for recorded results). The trainer (``trainer.run.run_job.execute``,
in this process) trains iris with multiclass logistic regression (tests/support/training_schemas.py's
``iris_multiclass_logistic``); the folder it writes holds the artifact, metadata.json, a model-settings.json naming
``modelplane_designed_model.mlserver_runtime.DesignedModelRuntime`` and that runtime package. One MLServer
(``servers.launch.launch_mlserver``, MLServer's own venv, ``parallel_workers: 0``) serves, side by side:

``stock``             the artifact file alone, copied into a folder of its own, placed with requirements {sklearn}:
                      the adapter picks ``mlserver_sklearn.SKLearnModel``; one FP64 tensor ``[N, 4]``;
``designed``          the trainer's folder as written (our runtime), the same ``[N, 4]`` request;
``designed-columns``  our runtime, the same rows as 4 named inputs ``[N]``, one per column;
``designed-pre``      (unless ``--without-pre``) a DIFFERENT model: ``iris_designed()``, binary, with preprocessing
                      (petal_area, wide) and postprocessing (score, flag), sent the same rows' 4 raw columns.
                      Its ratio to ``stock`` is not like for like: it shows what a design's expressions add.

Every answer is checked once before measuring: ``predict`` of stock, designed and designed-columns equals what the
estimator predicts here for the same rows (designed-pre: the oracle of tests/support/designed_models.py); a mismatch
stops the run. Latency: N sequential requests per way and round on a kept-alive connection, p50/p90/p99.
Throughput: C clients, each sending its next request when the last is answered, T seconds per way and round. R
rounds; within a round the ways take turns in short slices (25 requests; 1 s of throughput; the order rotating), so
a change of the shared machine's load hits every way alike. For every slice the CPU seconds (``/proc/PID/stat``) of
MLServer (every process of its session) and of this client are recorded: CPU ms per request per way.

After the server is stopped, the same requests are timed in process in MLServer's venv (no HTTP), median per way:
parsing the JSON body into MLServer's ``InferenceRequest``, the runtime's ``predict``, the work it wraps (the
estimator's ``predict`` for stock, ``ServedModel.predict`` for ours) and dumping the response: where the time goes.

    .venv/bin/python bench/designed_model_serving.py [--rounds 3] [--requests 300] [--clients 8] [--seconds 3]
                                                     [--rows 2] [--without-pre] [--quick] [--json PATH]
                                                     [--workdir DIR]

Everything listens on 127.0.0.1; MLServer is stopped by its PID (``LocalServer.stop``) whatever happens.

Over 400 lines on purpose: one benchmark is one script read top to bottom (the models and requests, the
answer check, the measuring, the in-process breakdown, the report); what the benchmarks share is in bench_processes.py
and tests/support/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import joblib
import numpy as np
import numpy.typing as npt
from bench_processes import (
    REPO,
    MiB,
    cpu_seconds,
    environment,
    session_cpu_seconds,
    session_rss_bytes,
    source_fingerprint,
    working_directory,
)
from gateway_inference import (
    Call,
    Run,
    closed_loop,
    measure_ways,
    post,
    ratios,
    sequential,
)

from servers.adapter import InferenceServer, ModelFiles
from servers.designed_model.served_model import ServedModel
from servers.launch import LocalServer, launch_mlserver, server_venv
from tests.support import training_schemas as schemas
from tests.support.designed_models import expected_outputs, train_into
from trainer.run.serving_bundle import SETTINGS_FILE

WAYS = ("stock", "designed", "designed-columns", "designed-pre")
LIKE_FOR_LIKE = ("designed", "designed-columns")  # the same estimator as stock, so their ratio to it means something
LOADED = {"stock": "iris_stock_1", "designed": "iris_designed_1", "designed-columns": "iris_designed_1"}
LOADED_PRE = "iris_pre_1"
ARTIFACT = "model.joblib"
LOAD_TIMEOUT = 120.0
SLICE_REQUESTS = 25  # the ways take turns every 25 sequential requests, and every second of throughput
KEYS = ("p50_ms", "p90_ms", "p99_ms")

Matrix = npt.NDArray[np.float64]
CpuProbe = Callable[[], dict[str, float]]


class AnswerMismatchError(Exception):
    """A way answered something else than the estimator predicts: the comparison would be meaningless."""


@dataclass
class Config:
    rounds: int
    requests: int
    clients: int
    seconds: float
    rows: int
    with_pre: bool
    breakdown_iterations: int
    workdir: Path

    @property
    def ways(self) -> tuple[str, ...]:
        return WAYS if self.with_pre else WAYS[:3]


# --------------------------------------------------------------------------------------------- models and requests


@dataclass
class Models:
    """The trained folders and the folder holding the bare artifact (what ``stock`` serves)."""

    designed: Path  # iris multiclass logistic regression, as the trainer wrote it
    stock: Path  # its model.joblib alone
    pre: Path | None  # iris_designed(): preprocessing + postprocessing, a different (binary) model


def train_models(root: Path, with_pre: bool) -> Models:
    root.mkdir()
    csv = schemas.write_iris_csv(root / "iris.csv")
    designed = train_into(root / "multiclass", schemas.iris_multiclass_logistic(), csv)
    stock = root / "stock"
    stock.mkdir()
    shutil.copyfile(designed / ARTIFACT, stock / ARTIFACT)
    pre = train_into(root / "designed", schemas.iris_designed(), csv) if with_pre else None
    return Models(designed, stock, pre)


def picked_rows(rows: int) -> npt.NDArray[np.int64]:
    """Which iris rows go into a request: a fixed shuffle of the 150, repeated (so all species occur)."""
    order = np.random.default_rng(0).permutation(150)
    return order[np.arange(rows) % len(order)]


def matrix_of(columns: Sequence[str], rows: int) -> Matrix:
    frame = schemas.iris_frame()
    values: Matrix = frame[list(columns)].to_numpy(dtype=np.float64)[picked_rows(rows)]
    return values


def matrix_body(matrix: Matrix) -> bytes:
    tensor = {"name": "input-0", "shape": list(matrix.shape), "datatype": "FP64", "data": matrix.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def columns_body(matrix: Matrix, names: Sequence[str]) -> bytes:
    inputs = [
        {"name": name, "shape": [len(matrix)], "datatype": "FP64", "data": matrix[:, index].tolist()}
        for index, name in enumerate(names)
    ]
    return json.dumps({"inputs": inputs}).encode()


@dataclass
class Requests:
    """Per way: the loaded model's name, the request body, and the outputs the answer must hold."""

    loaded: dict[str, str]
    bodies: dict[str, bytes]
    expected: dict[str, dict[str, list[Any]]]
    matrix: Matrix  # the stock/designed rows, in the estimator's column order


def build_requests(models: Models, rows: int) -> Requests:
    columns = ServedModel.load(models.designed).input_columns  # the estimator's features: no preprocessing
    matrix = matrix_of(columns, rows)
    predict = np.asarray(joblib.load(models.stock / ARTIFACT).predict(matrix)).tolist()
    loaded, bodies = dict(LOADED), {"stock": matrix_body(matrix), "designed": matrix_body(matrix)}
    bodies["designed-columns"] = columns_body(matrix, columns)
    expected: dict[str, dict[str, list[Any]]] = {way: {"predict": predict} for way in bodies}
    if models.pre is not None:
        raw = ServedModel.load(models.pre).input_columns
        raw_matrix = matrix_of(raw, rows)
        loaded["designed-pre"] = LOADED_PRE
        bodies["designed-pre"] = columns_body(raw_matrix, raw)
        oracle = expected_outputs(models.pre, {name: raw_matrix[:, i] for i, name in enumerate(raw)})
        expected["designed-pre"] = {name: oracle[name].tolist() for name in ("predict", "score", "flag")}
    return Requests(loaded, bodies, expected, matrix)


async def load_models(adapter: InferenceServer, models: Models) -> None:
    placed = [("iris_stock", models.stock), ("iris_designed", models.designed)]
    if models.pre is not None:
        placed.append(("iris_pre", models.pre))
    for name, folder in placed:
        await adapter.place_files(ModelFiles(name, 1, folder, frozenset({"sklearn"})))
        await adapter.load(f"{name}_1")


async def check_answers(session: aiohttp.ClientSession, url_of: dict[str, str], requests: Requests) -> dict[str, Any]:
    """One untimed request per way; every expected output must be in the answer, equal. Raises on a mismatch."""
    checks: dict[str, Any] = {}
    for way, url in url_of.items():
        answer = await post(session, url, requests.bodies[way])
        outputs = {tensor["name"]: tensor for tensor in answer["outputs"]}
        for name, wanted in requests.expected[way].items():
            got = outputs.get(name, {}).get("data")
            if got != wanted:
                raise AnswerMismatchError(f"{way}: output {name!r} is {got!r}, expected {wanted!r}")
        checks[way] = {
            "outputs": [
                {"name": tensor["name"], "datatype": tensor["datatype"], "shape": tensor["shape"]}
                for tensor in answer["outputs"]
            ],
            "equal_to_expected": True,
            "distinct_predictions": len({str(value) for value in requests.expected[way]["predict"]}),
        }
    stock = (await post(session, url_of["stock"], requests.bodies["stock"]))["outputs"][0]["data"]
    designed = (await post(session, url_of["designed"], requests.bodies["designed"]))["outputs"][0]["data"]
    if stock != designed:  # the same rows through both runtimes: the same labels, or the comparison means nothing
        raise AnswerMismatchError(f"stock predicts {stock!r}, designed {designed!r}")
    checks["stock_equals_designed"] = True
    return checks


# --------------------------------------------------------------------------------------------- measuring


async def phase(cpu: CpuProbe, run: Run) -> tuple[list[float], dict[str, Any]]:
    """One measured slice: its latencies and {wall, requests, errors, CPU seconds per process}."""
    before = cpu()
    started = time.perf_counter()
    latencies, errors = await run()
    wall = time.perf_counter() - started
    after = cpu()
    used = {name: round(after[name] - before[name], 3) for name in before}
    return latencies, {"wall_s": round(wall, 3), "requests": len(latencies), "errors": errors, "cpu_s": used}


def ratio(over: float | None, under: float | None, digits: int = 3) -> float | None:
    return round(over / under, digits) if over and under else None


def ratios_to_stock(latency: dict[str, Any], throughput: dict[str, Any], way: str) -> dict[str, Any]:
    mine, stock = throughput[way], throughput["stock"]
    return {
        "latency": ratios(latency, way, "stock", KEYS),
        "throughput": ratio(mine["requests_per_s"], stock["requests_per_s"]),
        "throughput_per_round": [
            ratio(a["requests"] / a["wall_s"], b["requests"] / b["wall_s"])
            for a, b in zip(mine["rounds"], stock["rounds"], strict=True)
        ],
        "mlserver_cpu_per_request": ratio(
            mine["cpu_ms_per_request"]["mlserver"], stock["cpu_ms_per_request"]["mlserver"]
        ),
    }


async def measure(server: LocalServer, config: Config, requests: Requests) -> dict[str, Any]:
    ways = config.ways
    url_of = {way: f"{server.http_url}/v2/models/{requests.loaded[way]}/infer" for way in ways}
    mlserver_pid, client_pid = server.pid, os.getpid()

    def cpu() -> dict[str, float]:
        return {"mlserver": session_cpu_seconds(mlserver_pid), "client": cpu_seconds(client_pid)}

    def call_of(way: str) -> Call:
        url, body = url_of[way], requests.bodies[way]

        async def call(session: aiohttp.ClientSession) -> None:
            await post(session, url, body)

        return call

    result: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        result["checks"] = await check_answers(session, url_of, requests)
        for way in ways:  # warm-up: connections open, first-request paths taken
            await sequential(session, call_of(way), 50)()
        chunk = min(SLICE_REQUESTS, config.requests)
        result["latency"] = await measure_ways(
            ways,
            config.rounds,
            max(1, config.requests // chunk),
            lambda run: phase(cpu, run),
            lambda w: sequential(session, call_of(w), chunk),
        )
        slices = max(1, round(config.seconds))
        result["throughput"] = await measure_ways(
            ways,
            config.rounds,
            slices,
            lambda run: phase(cpu, run),
            lambda w: closed_loop(session, call_of(w), config.clients, config.seconds / slices),
        )
    result["mlserver_rss_bytes"], result["mlserver_processes"] = session_rss_bytes(mlserver_pid)
    result["ratios_to_stock"] = {
        way: ratios_to_stock(result["latency"], result["throughput"], way) for way in ways if way != "stock"
    }
    return result


# --------------------------------------------------------------------------------------------- in process

# Runs in MLServer's venv (mlserver is not installed in ours): builds each model as MLServer does (its placed
# model-settings.json, ``settings.implementation``, ``load``) and times, per request: the JSON body into an
# InferenceRequest, the runtime's predict, the work it wraps, and the response dumped to JSON.
BREAKDOWN = r"""
import asyncio, importlib, json, statistics, sys, time

from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest

spec = json.load(sys.stdin)


def core_of(model, request):
    # What the runtime wraps: the estimator's predict (stock) or ServedModel.predict (ours), on decoded tensors.
    if hasattr(model, "_served"):
        served = importlib.import_module("modelplane_designed_model.served_model")
        tensors = [served.InputTensor(item.name, NumpyCodec.decode_input(item)) for item in request.inputs]
        return lambda: model._served.predict(tensors)
    features = model.decode_request(request, default_codec=NumpyRequestCodec)
    return lambda: model._model.predict(features)


async def main():
    models, bodies, cores = {}, {}, {}
    for way, item in spec["ways"].items():
        settings = ModelSettings.parse_file(item["settings"])
        model = settings.implementation(settings)
        await model.load()
        models[way], bodies[way] = model, item["body"]
        cores[way] = core_of(model, InferenceRequest.model_validate_json(item["body"]))
    times = {way: {"parse": [], "predict": [], "core": [], "dump": []} for way in models}
    ways = list(models)
    for index in range(spec["warmup"] + spec["iterations"]):
        for way in ways[index % len(ways):] + ways[: index % len(ways)]:
            t0 = time.perf_counter()
            request = InferenceRequest.model_validate_json(bodies[way])
            t1 = time.perf_counter()
            response = await models[way].predict(request)
            t2 = time.perf_counter()
            response.model_dump_json()
            t3 = time.perf_counter()
            cores[way]()
            t4 = time.perf_counter()
            if index >= spec["warmup"]:
                for key, value in (("parse", t1 - t0), ("predict", t2 - t1), ("dump", t3 - t2), ("core", t4 - t3)):
                    times[way][key].append(value)
    medians = {
        way: {f"{key}_us": round(statistics.median(values) * 1e6, 1) for key, values in found.items()}
        for way, found in times.items()
    }
    print(json.dumps({"iterations": spec["iterations"], "median": medians}))


asyncio.run(main())
"""


def in_process_breakdown(repository: Path, config: Config, requests: Requests) -> dict[str, Any]:
    """The BREAKDOWN script above, with MLServer's venv's Python, over the folders the server was given."""
    spec = {
        "warmup": max(20, config.breakdown_iterations // 10),
        "iterations": config.breakdown_iterations,
        "ways": {
            way: {"settings": str(repository / requests.loaded[way] / SETTINGS_FILE), "body": requests.bodies[way]}
            for way in config.ways
        },
    }
    python = server_venv("mlserver") / "bin" / "python"
    done = subprocess.run(  # noqa: S603 - fixed argv; it is waited for (killed on timeout)
        [str(python), "-c", BREAKDOWN],
        input=json.dumps(spec, default=bytes.decode),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=config.workdir,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    found: dict[str, Any] = json.loads(done.stdout)
    return found


# --------------------------------------------------------------------------------------------- the run


def code_fingerprint() -> dict[str, Any]:
    """Which runtime source was measured (servers/designed_model/*.py)."""
    return source_fingerprint(sorted((REPO / "servers" / "designed_model").glob("*.py")))


async def benchmark(config: Config, models: Models, requests: Requests) -> dict[str, Any]:
    result: dict[str, Any] = {
        "environment": await asyncio.to_thread(environment),
        "config": {
            "rounds": config.rounds,
            "requests": config.requests,
            "clients": config.clients,
            "seconds": config.seconds,
            "rows": config.rows,
            "ways": list(config.ways),
            "request_body_bytes": {way: len(body) for way, body in requests.bodies.items()},
        },
        "code": code_fingerprint(),
    }
    work = config.workdir / "mlserver"
    server = await launch_mlserver(work, venv=server_venv("mlserver"), ready_timeout=120)
    adapter: InferenceServer | None = None
    try:
        adapter = server.adapter(load_timeout=LOAD_TIMEOUT)
        started = time.perf_counter()
        await load_models(adapter, models)
        result["load_s"] = round(time.perf_counter() - started, 2)
        result["mlserver_rss_bytes_loaded"] = session_rss_bytes(server.pid)[0]
        result.update(await measure(server, config, requests))
        for name in sorted(set(requests.loaded.values())):  # the server still unloads them cleanly
            await adapter.unload(name)
        result["unloaded"] = not set(requests.loaded.values()) & set(await adapter.loaded_models())
    finally:
        if adapter is not None:
            await adapter.close()
        result["mlserver_exit"] = await server.stop()
    log = server.log_path.read_text(errors="replace").splitlines()
    result["mlserver_log_errors"] = [line for line in log if "ERROR" in line or "Traceback" in line][:20]
    result["in_process"] = await asyncio.to_thread(in_process_breakdown, server.repository, config, requests)
    result["environment"]["loadavg_end"] = os.getloadavg()[0]
    return result


def errors_of(result: dict[str, Any]) -> int:
    return sum(way["errors"] for part in ("latency", "throughput") for way in result[part].values())


def render(result: dict[str, Any]) -> str:
    env, cfg, ways = result["environment"], result["config"], result["config"]["ways"]
    sizes = result["config"]["request_body_bytes"]
    lines = [
        f"nproc {env['nproc']}, Python {env['python']}, {env['mlserver']}, load average "
        f"{env['loadavg_start']:.2f} -> {env['loadavg_end']:.2f}; {cfg['rounds']} rounds; runtime source "
        f"{result['code']['sha256_12']} (newest file {result['code']['newest_mtime_utc']})",
        f"{cfg['rows']} rows per request (body bytes: matrix {sizes['stock']}, columns {sizes['designed-columns']}); "
        f"{cfg['requests']} sequential requests per way and round; {cfg['clients']} clients x {cfg['seconds']:g} s "
        f"per way and round",
        "",
        f"{'way':<17} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7}  {'p50 per round':<20} {'req/s':>6} "
        f"{'req/s per round':<17} MLServer / client CPU ms per request (throughput; sequential)",
    ]
    for way in ways:
        lat, thr = result["latency"][way], result["throughput"][way]
        per_round = " ".join(f"{part['latency']['p50_ms']:.2f}" for part in lat["rounds"])
        rates = " ".join(f"{part['requests'] / part['wall_s']:.0f}" for part in thr["rounds"])
        cpu, seq = thr["cpu_ms_per_request"], lat["cpu_ms_per_request"]
        label = f"{way}*" if way == "designed-pre" else way
        lines.append(
            f"{label:<17} {lat['latency']['p50_ms']:>7.2f} {lat['latency']['p90_ms']:>7.2f} "
            f"{lat['latency']['p99_ms']:>7.2f}  {per_round:<20} {thr['requests_per_s']:>6.0f} {rates:<17} "
            f"{cpu['mlserver']:.2f} / {cpu['client']:.2f}; {seq['mlserver']:.2f} / {seq['client']:.2f}"
        )
    lines += ["", "ratios to stock: p50 / p90 / p99 (per-round p50); throughput (per round); MLServer CPU/request"]
    for way, found in result["ratios_to_stock"].items():
        lat = found["latency"]
        lines.append(
            f"  {way:<17} {lat['p50_ms']} / {lat['p90_ms']} / {lat['p99_ms']} ({lat['per_round_p50']}); "
            f"{found['throughput']} ({found['throughput_per_round']}); {found['mlserver_cpu_per_request']}"
        )
    if "designed-pre" in ways:
        lines.append("  * designed-pre is another model (binary, preprocessing + postprocessing): not like for like")
    inside = result["in_process"]
    if "median" in inside:
        lines += [
            "",
            f"in process, MLServer's venv, no HTTP (median us of {inside['iterations']}): parse body / runtime "
            f"predict / of which estimator (stock) or ServedModel.predict (ours) / dump response",
        ]
        for way, found in inside["median"].items():
            lines.append(
                f"  {way:<17} {found['parse_us']:>8.1f} {found['predict_us']:>8.1f} {found['core_us']:>8.1f} "
                f"{found['dump_us']:>8.1f}"
            )
    else:
        lines += ["", f"in-process breakdown failed: {inside.get('error')}"]
    lines += [
        "",
        f"MLServer: models loaded in {result['load_s']} s; RSS {result['mlserver_rss_bytes_loaded'] / MiB:.1f} MiB "
        f"after loading, {result['mlserver_rss_bytes'] / MiB:.1f} MiB after measuring "
        f"({result['mlserver_processes']} processes); exit {result['mlserver_exit']}; "
        f"{len(result['mlserver_log_errors'])} error lines in its log",
        f"errors: {errors_of(result)}; answers checked: stock == designed == expected "
        f"({result['checks']['stock_equals_designed']}); unloaded {result['unloaded']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Our MLServer runtime vs MLServer's SKLearnModel, same estimator.")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per way and round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the throughput part (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per way and round of throughput")
    parser.add_argument("--rows", type=int, default=2, help="iris rows per request (default 2)")
    parser.add_argument("--without-pre", action="store_true", help="leave out designed-pre (the other model)")
    parser.add_argument("--breakdown-iterations", type=int, default=1000, help="in-process timings per way")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 50 requests, 1 s")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep models and logs in a new folder in DIR (default: removed)")
    options = parser.parse_args(argv)
    if options.quick:
        options.rounds, options.requests, options.seconds, options.breakdown_iterations = 2, 50, 1.0, 200
    if not (1 <= options.rounds <= 20 and 1 <= options.clients <= 256 and options.requests >= 1):
        parser.error("--rounds 1..20, --clients 1..256, --requests >= 1")
    if not (1 <= options.rows <= 100_000 and options.seconds > 0 and options.breakdown_iterations >= 1):
        parser.error("--rows 1..100000, --seconds > 0, --breakdown-iterations >= 1")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    with working_directory(options.workdir, "designed-model-serving") as workdir:
        config = Config(
            options.rounds,
            options.requests,
            options.clients,
            options.seconds,
            options.rows,
            not options.without_pre,
            options.breakdown_iterations,
            workdir,
        )
        models = train_models(workdir / "models", config.with_pre)
        requests = build_requests(models, config.rows)
        result = asyncio.run(benchmark(config, models, requests))
    print(render(result))
    if options.json is not None:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    healthy = not errors_of(result) and result["mlserver_exit"] == 0 and result["unloaded"]
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
