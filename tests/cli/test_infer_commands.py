"""``modelplane model|pipeline|experiment infer`` and ``pipeline inspect`` against a real stack: a scheduler, an agent
with a real MLServer, and a gateway, all processes on loopback (one stack for the module: it takes a while to load).

Served: iris models ``pa`` and ``pa2`` (the same classifier), ``pb`` (2 * class + 1), ``pc`` ((class + 1) % 3); the
pipelines ``abc`` and ``abc2`` (pa -> pb, pa -> pc, joined: tests/support/pipeline_models.py); the experiments
``sticky`` (pa | pa2, sticky sessions) and ``pipes`` (abc | abc2, over pipelines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.cli.infer_commands import header, percentile, read_data
from tests.cli.test_model_commands import assert_clean_failure, closed_port, in_process
from tests.support.cluster_fixtures import Cluster, Iris, api_of, model, until
from tests.support.pipeline_models import class_models, three_step_pipeline
from tests.support.processes import MODELPLANE, STARTED, GatewayProcess, run_modelplane, start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]

PIPELINE_READY = pb.PipelineVersionState.PipelineStatus.Value("PipelineReady")


@dataclass(frozen=True)
class Stack:
    gateway: GatewayProcess
    iris: Iris

    @property
    def address(self) -> str:
        return self.gateway.url.removeprefix("http://")

    @property
    def data(self) -> str:
        return json.dumps(self.iris.request)


async def _serve_everything(cluster: Cluster, iris: Iris, models_root: Path) -> GatewayProcess:
    scheduler = cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    b_folder, c_folder = class_models(models_root)
    async with api_of(cluster) as api:
        for name, folder in (("pa", iris.folder), ("pa2", iris.folder), ("pb", b_folder), ("pc", c_folder)):
            await api.load(model(name, str(folder)))
        gateway = await asyncio.to_thread(
            start_gateway, cluster.root / "gateway", scheduler.listen, "--grpc-listen=127.0.0.1:0"
        )
        for name in ("pa", "pa2", "pb", "pc"):
            await api.available(name)
    async with aio.insecure_channel(scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        for name in ("abc", "abc2"):
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=three_step_pipeline(name)), timeout=10)
        experiments = [
            pb.Experiment(
                name="sticky",
                candidates=[pb.ExperimentCandidate(name="pa", weight=1), pb.ExperimentCandidate(name="pa2", weight=1)],
                config=pb.ExperimentConfig(stickySessions=True),
                resourceType=pb.MODEL,
            ),
            pb.Experiment(
                name="pipes",
                candidates=[
                    pb.ExperimentCandidate(name="abc", weight=1),
                    pb.ExperimentCandidate(name="abc2", weight=1),
                ],
                resourceType=pb.PIPELINE,
            ),
        ]

        async def pipelines_ready() -> bool:
            for name in ("abc", "abc2"):
                [status] = [s async for s in stub.PipelineStatus(pb.PipelineStatusRequest(name=name), timeout=10)]
                state = status.versions[-1].state
                if not (state.status == PIPELINE_READY and state.pipelineGwStatus == PIPELINE_READY):
                    return False
            return True

        await until(pipelines_ready, "pipelines abc and abc2 ready at the gateway", cluster.diagnostics)
        for experiment in experiments:
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=10)

        async def experiments_active() -> bool:
            for experiment in experiments:
                request = pb.ExperimentStatusRequest(name=experiment.name)
                [status] = [s async for s in stub.ExperimentStatus(request, timeout=10)]
                if not (status.active and status.candidatesReady):
                    return False
            return True

        await until(experiments_active, "experiments sticky and pipes active", cluster.diagnostics)
    return gateway


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, iris: Iris) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("infer-stack")
    (root / "scheduler").mkdir()
    cluster = Cluster(root)
    gateway: GatewayProcess | None = None
    try:
        gateway = asyncio.run(_serve_everything(cluster, iris, root / "models"))
        # The module's processes, not one test's: out of STARTED (which the autouse fixture empties after every
        # test), stopped by PID here instead, as the session's Kafka broker is.
        assert cluster.scheduler is not None
        for process in (cluster.scheduler.process, *(agent.process for agent in cluster.agents), gateway.process):
            STARTED.remove(process)
        yield Stack(gateway, iris)
    finally:
        if gateway is not None:
            stop_process(gateway.process)
        cluster.close()


def infer(stack: Stack, kind: str, name: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_modelplane(kind, "infer", name, "--data", data or stack.data, "--gateway", stack.address, *args)


def classes(answer: dict[str, Any]) -> list[int]:
    [output] = answer["outputs"]
    data: list[int] = output["data"]
    return data


def assert_outputs(tensors: list[dict[str, Any]], expected: dict[str, list[int]]) -> None:
    """The tensors hold ``expected``'s data by name (b is a linear regression: floats close to whole numbers)."""
    got = {tensor["name"]: tensor["data"] for tensor in tensors}
    assert set(got) == set(expected)
    for name, data in expected.items():
        assert got[name] == pytest.approx(data), name


# ------------------------------------------------------------------------------- against the stack


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_model_infer_prints_the_answer_as_json_or_a_table(stack: Stack, tmp_path: Path) -> None:
    inferred = infer(stack, "model", "pa")
    assert inferred.returncode == 0, inferred.stderr
    answer = json.loads(inferred.stdout)
    assert (answer["model_name"], classes(answer)) == ("pa", stack.iris.expected)

    table = infer(stack, "model", "pa", "--output", "table")
    assert table.returncode == 0, table.stderr
    first, row = table.stdout.splitlines()
    assert first.startswith("model pa  version ")
    assert row.split()[:2] == ["predict", "INT64"]
    assert row.split()[-1] == json.dumps(stack.iris.expected, separators=(",", ":"))

    # The request from a file, and from standard input.
    request_file = tmp_path / "request.json"
    request_file.write_text(stack.data)
    from_file = infer(stack, "model", "pa", data=f"@{request_file}")
    assert from_file.returncode == 0, from_file.stderr
    assert classes(json.loads(from_file.stdout)) == stack.iris.expected
    from_stdin = subprocess.run(
        [*MODELPLANE, "model", "infer", "pa", "--data", "-", "--gateway", stack.address],
        input=stack.data,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert classes(json.loads(from_stdin.stdout)) == stack.iris.expected


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_the_gateways_refusals_in_words(stack: Stack, tmp_path: Path) -> None:
    unknown = infer(stack, "model", "nosuch")
    assert_clean_failure(unknown)  # 1: the work failed
    assert f"gateway at {stack.address} answered 404 Not Found: model 'nosuch' not found" in unknown.stderr

    # Well formed for the command, malformed for the gateway (4 elements said, 3 given): its 400 is bad input.
    bad = '{"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3]}]}'
    refused = infer(stack, "model", "pa", data=bad)
    assert_clean_failure(refused, status=2)
    assert f"gateway at {stack.address} answered 400 Bad Request: " in refused.stderr

    no_pipeline = infer(stack, "pipeline", "nosuch")
    assert_clean_failure(no_pipeline)
    assert "answered 404 Not Found: pipeline 'nosuch' not found" in no_pipeline.stderr
    no_experiment = infer(stack, "experiment", "nosuch")
    assert_clean_failure(no_experiment)
    assert f"the gateway at {stack.address} knows no experiment 'nosuch'" in no_experiment.stderr

    missing = tmp_path / "missing.json"
    unreadable = infer(stack, "model", "pa", data=f"@{missing}")
    assert_clean_failure(unreadable, status=2)
    assert f"--data: cannot read '{missing}': No such file or directory" in unreadable.stderr


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_pipeline_infer_and_inspect(stack: Stack) -> None:
    expected = {
        "b_predict": [2 * k + 1 for k in stack.iris.expected],
        "c_predict": [(k + 1) % 3 for k in stack.iris.expected],
    }
    inferred = infer(stack, "pipeline", "abc")
    assert inferred.returncode == 0, inferred.stderr
    answer = json.loads(inferred.stdout)
    assert_outputs(answer["outputs"], expected)
    assert "steps" not in answer  # only inspect asks for them

    inspected = run_modelplane("pipeline", "inspect", "abc", "--data", stack.data, "--gateway", stack.address)
    assert inspected.returncode == 0, inspected.stderr
    document = json.loads(inspected.stdout)
    steps = {entry["step"]: entry for entry in document["steps"]}
    assert document["steps"][0]["step"] == "pa"
    assert set(steps) == {"pa", "pb", "pc"}
    [request] = stack.iris.request["inputs"]
    [pa_in] = steps["pa"]["inputs"]
    assert (pa_in["name"], pa_in["data"]) == (request["name"], request["data"])
    [pa_out] = steps["pa"]["outputs"]
    assert pa_out["data"] == stack.iris.expected
    for step in ("pb", "pc"):  # each gets pa's answer and gives what the pipeline puts out
        [step_in] = steps[step]["inputs"]
        assert step_in["data"] == stack.iris.expected
        [step_out] = steps[step]["outputs"]
        assert step_out["data"] == pytest.approx(expected[f"{step[1]}_predict"])
    assert_outputs(document["outputs"], expected)

    table = run_modelplane(
        "pipeline", "inspect", "abc", "--data", stack.data, "--gateway", stack.address, "--output", "table"
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "step pa (model pa)"
    assert lines[1].split()[:2] == ["in", "predict"]
    assert lines[2].split()[:2] == ["out", "predict"]
    assert "pipeline abc output" in lines
    assert {line.split()[1] for line in lines[lines.index("pipeline abc output") + 1 :]} == {"b_predict", "c_predict"}


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_experiment_infer_sticky_and_iterations(stack: Stack) -> None:
    sticky = infer(stack, "experiment", "sticky", "--sticky")
    assert sticky.returncode == 0, sticky.stderr
    answer = json.loads(sticky.stdout)
    [route_line] = sticky.stderr.splitlines()
    assert route_line == f"x-modelplane-route: {answer['model_name']}"
    assert answer["model_name"] in {"pa", "pa2"}
    assert classes(answer) == stack.iris.expected

    # --iterations with --sticky: the route of the first answer goes back with every later request.
    run = infer(stack, "experiment", "sticky", "--sticky", "--iterations", "30", "--output", "json")
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    [(route, count)] = figures["routes"].items()
    assert (route in {"pa", "pa2"}, count, figures["requests"]) == (True, 30, 30)
    latency = figures["latency_ms"]
    assert list(latency) == ["min", "p50", "p90", "p99", "max"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert figures["throughput_per_second"] > 0

    # A route given with --header is followed as the gateway follows any route header.
    pinned = infer(
        stack, "experiment", "sticky", "--header", "x-modelplane-route:pa2", "--iterations", "10", "--output", "table"
    )
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.splitlines()[-1] == "routes       pa2 10"
    assert pinned.stdout.startswith(f"requests     10 to experiment sticky through {stack.address}\nlatency ms   min ")

    # An experiment over pipelines goes to the pipelines' path; it is not sticky, and --sticky says so.
    pipes = infer(stack, "experiment", "pipes", "--sticky")
    assert pipes.returncode == 0, pipes.stderr
    assert json.loads(pipes.stdout)["model_name"] in {"abc", "abc2"}
    assert "the gateway named no route (x-modelplane-route): pipes is not an experiment with sticky" in pipes.stderr
    several = infer(stack, "experiment", "pipes", "--sticky", "--iterations", "5")
    assert several.returncode == 0, several.stderr
    assert json.loads(several.stdout)["routes"] == {}
    assert len(several.stderr.splitlines()) == 1  # said once, not per request


@pytest.mark.servers
@pytest.mark.timeout(900)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["inputs", "name", "x"]), inner)
            ),
            max_leaves=12,
        ).map(json.dumps),
        st.text(max_size=30).map(lambda name: f"@{name}"),  # a file name: mostly missing, or a folder
    ).filter(lambda data: data != "-")
)
def test_any_data_is_an_answer_or_an_error_in_words(
    stack: Stack, capsys: pytest.CaptureFixture[str], data: str
) -> None:
    """Whatever --data holds, against the live gateway: an answer (exit 0), or one error line, exit 2 for what is
    wrong with the request, never a traceback."""
    # --data=DATA: a value starting with "-" is then --data's, not a flag; "-" itself reads standard input.
    result = in_process(capsys, "model", "infer", "pa", f"--data={data}", "--gateway", stack.address)
    if result.returncode == 0:
        assert json.loads(result.stdout)["model_name"] == "pa"
        return
    assert result.returncode == 2, (data, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(("modelplane: error: --data", f"modelplane: error: gateway at {stack.address}"))
    assert len(result.stderr.splitlines()) == 1, result.stderr


HEADER_NAMES = st.one_of(
    st.text(alphabet="!#$%&'*+.^_`|~-abcXYZ019", min_size=1, max_size=12),
    st.text(max_size=12),
    st.sampled_from(["x-request-id", "Authorization", "x-modelplane-route", "Content-Length", "Host", "traceparent"]),
)


@pytest.mark.servers
@pytest.mark.timeout(900)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=HEADER_NAMES, value=st.text(max_size=40), colon=st.sampled_from([":", ": ", " : ", ""]))
def test_any_header_is_sent_or_refused_in_words(
    stack: Stack, capsys: pytest.CaptureFixture[str], name: str, value: str, colon: str
) -> None:
    """--header NAME:VALUE against the live gateway: a header the command takes never breaks the request (the
    answer is the model's), one it refuses is a usage error naming --header; never a traceback."""
    text = f"{name}{colon}{value}"
    result = in_process(
        capsys, "model", "infer", "pa", "--data", stack.data, "--gateway", stack.address, "--header", text
    )
    assert "Traceback" not in result.stderr
    if result.returncode == 2:
        assert "argument --header: " in result.stderr, result.stderr
        return
    assert result.returncode == 0, (text, result.stderr)
    assert classes(json.loads(result.stdout)) == stack.iris.expected


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_infer_over_grpc(stack: Stack) -> None:
    """--grpc: the gateway's V2 gRPC endpoint answers as its REST one does, the route in its metadata."""
    assert stack.gateway.grpc_listen is not None
    grpc_address = stack.gateway.grpc_listen

    def over_grpc(kind: str, name: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_modelplane(
            kind, "infer", name, "--data", data or stack.data, "--gateway", grpc_address, "--grpc", *args
        )

    model = over_grpc("model", "pa")
    assert model.returncode == 0, model.stderr
    assert (json.loads(model.stdout)["model_name"], classes(json.loads(model.stdout))) == ("pa", stack.iris.expected)

    pipeline = over_grpc("pipeline", "abc")
    assert pipeline.returncode == 0, pipeline.stderr
    assert {tensor["name"] for tensor in json.loads(pipeline.stdout)["outputs"]} == {"b_predict", "c_predict"}

    sticky = over_grpc("experiment", "sticky", "--sticky", "--iterations", "10")
    assert sticky.returncode == 0, sticky.stderr
    [(route, count)] = json.loads(sticky.stdout)["routes"].items()
    assert (route in {"pa", "pa2"}, count) == (True, 10)
    assert sticky.stderr == f"x-modelplane-route: {route}\n"

    unknown = over_grpc("model", "nosuch")
    assert_clean_failure(unknown)
    assert f"gateway at {grpc_address} answered NOT_FOUND: " in unknown.stderr
    bad = '{"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3]}]}'
    refused = over_grpc("model", "pa", data=bad)
    assert_clean_failure(refused, status=2)
    assert "--data cannot be sent over gRPC: " in refused.stderr

    port = closed_port()
    unreachable = run_modelplane(
        "model", "infer", "pa", "--data", stack.data, "--grpc", "--gateway", f"127.0.0.1:{port}"
    )
    assert_clean_failure(unreachable)
    assert f"cannot reach the gateway's gRPC endpoint at 127.0.0.1:{port}" in unreachable.stderr


# ------------------------------------------------------------------------------- without a stack


def test_an_unreachable_gateway() -> None:
    port = closed_port()
    for kind in ("model", "pipeline", "experiment"):
        result = run_modelplane(
            kind, "infer", "x", "--data", '{"inputs": [{"name": "a"}]}', "--gateway", f"127.0.0.1:{port}"
        )
        assert_clean_failure(result)
        assert (
            f"cannot reach the gateway at 127.0.0.1:{port}: is `modelplane gateway` or `modelplane up`" in result.stderr
        )


def test_plaintext_off_loopback_needs_insecure(capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(
        capsys, "model", "infer", "x", "--data", '{"inputs": [{"name": "a"}]}', "--gateway", "10.1.2.3:9000"
    )
    assert_clean_failure(result, status=2)
    assert "refusing plaintext HTTP to the gateway at 10.1.2.3:9000" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pipeline",), "the following arguments are required: ACTION"),
        (("experiment", "frob"), "invalid choice: 'frob'"),
        (("pipeline", "inspect", "abc"), "the following arguments are required: --data"),
        (("model", "infer", "x", "--data", "{}", "--iterations", "0"), "argument --iterations: '0' is not a whole"),
        (("model", "infer", "x", "--data", "{}", "--output", "yaml"), "argument --output: invalid choice: 'yaml'"),
        (("model", "infer", "x", "--data", "{}", "--header", "novalue"), "'novalue' is not NAME:VALUE"),
        (("model", "infer", "x", "--data", "{}", "--header", "Host:h"), "Host is set by modelplane itself"),
        (("model", "infer", "x", "--data", "{}", "--scheduler", "h:1"), "unrecognized arguments: --scheduler"),
    ],
)
def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str) -> None:
    result = in_process(capsys, *args)
    assert_clean_failure(result, status=2)
    assert message in result.stderr


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=100))
def test_header_is_a_name_and_printable_value_or_refused(text: str) -> None:
    try:
        name, value = header(text)
    except argparse.ArgumentTypeError as error:  # nothing else may come out
        assert "\n" not in str(error)
        return
    assert f"{name}:{value}" == f"{name}:{value}".strip()
    assert name
    assert all(0x21 <= ord(c) < 0x7F for c in name)
    assert all(c == "\t" or 0x20 <= ord(c) < 0x7F for c in value)


def test_percentiles_are_latencies_some_request_had() -> None:
    ordered = [float(n) for n in range(1, 101)]
    assert [percentile(ordered, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_data_over_the_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    from modelplane.cli.infer_commands import InferError  # noqa: PLC0415 - next to its one use
    from modelplane.inference_limits import MAX_REQUEST_BODY_BYTES  # noqa: PLC0415

    big = tmp_path / "big.json"
    with big.open("wb") as file:
        file.truncate(MAX_REQUEST_BODY_BYTES + 10)
    with pytest.raises(InferError) as caught:
        read_data(f"@{big}")
    assert caught.value.exit_status == 2
    assert f"larger than {MAX_REQUEST_BODY_BYTES} bytes" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("@bad\x00name", "--data: cannot read 'bad\\x00name': embedded null byte"),
        ("@", "--data: cannot read '.': Is a directory"),
        ('{"inputs": [{"name": "a"}]', "--data is not JSON: "),
        ("[" * 100_000, "--data is not JSON: "),  # deeper than the parser's recursion limit
    ],
    ids=["nul-in-file-name", "no-file-name", "truncated", "too-deep"],
)
def test_data_that_cannot_be_read_is_bad_input(data: str, message: str) -> None:
    from modelplane.cli.infer_commands import InferError  # noqa: PLC0415 - next to its uses

    with pytest.raises(InferError) as caught:
        read_data(data)
    assert caught.value.exit_status == 2
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("kind", "action", "name"),
    [
        ("model", "infer", "../pipelines/abc"),
        ("model", "infer", "a?b"),
        ("pipeline", "infer", "abc/../../models/pa"),
        ("experiment", "infer", "a#b"),
        ("pipeline", "inspect", "%2e%2e"),
    ],
)
def test_a_name_that_is_no_resource_name_is_bad_input(
    capsys: pytest.CaptureFixture[str], kind: str, action: str, name: str
) -> None:
    # The name becomes a segment of the request's path: one with '/', '?', '#' or an escape would send the
    # request somewhere else (``../pipelines/abc`` to pipeline abc under ``model infer``).
    result = in_process(
        capsys, kind, action, name, "--data", '{"inputs": [{"name": "a"}]}', "--gateway", f"127.0.0.1:{closed_port()}"
    )
    assert_clean_failure(result, status=2)
    assert f"argument name: {kind} name {name!r} is invalid" in result.stderr


def test_model_metadata_takes_the_gateways_transport_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # `model metadata` talks to the gateway as infer does: its TLS and token flags are the gateway's, and plaintext
    # off loopback is refused; they were the scheduler's flags, taken and ignored (always plaintext, no token).
    result = in_process(capsys, "model", "metadata", "x", "--gateway", "10.1.2.3:9000", "--timeout", "1")
    assert_clean_failure(result, status=2)
    assert "refusing plaintext HTTP to the gateway at 10.1.2.3:9000" in result.stderr
    result = in_process(capsys, "model", "metadata", "x", "--scheduler", "127.0.0.1:9004")
    assert_clean_failure(result, status=2)
    assert "unrecognized arguments: --scheduler" in result.stderr
    result = in_process(capsys, "model", "metadata", "../pipelines/x")
    assert_clean_failure(result, status=2)
    assert "argument name: model name '../pipelines/x' is invalid" in result.stderr
