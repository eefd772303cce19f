"""``modelplane load|unload|status -f``, ``pipeline ...``, ``experiment ...``, ``model list``, ``server list|status``
against a real scheduler process with no inference server (models stay ScheduleFailed, pipelines and experiments
wait for them: enough to see every call made, in order, and every answer printed)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelplane.cli.main import main
from modelplane.cli.manifest_documents import parse_resources
from modelplane.cli.manifests import ManifestError
from tests.support.processes import MODELPLANE, SchedulerProcess, run_modelplane

API = "apiVersion: mlops.seldon.io/v1alpha1"
SERVER = f"""{API}
kind: Server
metadata: {{name: edge}}
spec: {{serverConfig: mlserver, replicas: 2}}
"""
SERVER_CONFIG = f"""{API}
kind: ServerConfig
metadata: {{name: mlserver}}
spec: {{podSpec: {{containers: []}}}}
"""
MODEL = f"""{API}
kind: Model
metadata: {{name: {{name}}}}
spec: {{storageUri: /models/{{name}}, requirements: [sklearn], memory: 10Mi}}
"""
PIPELINE = f"""{API}
kind: Pipeline
metadata: {{name: chain}}
spec:
  steps: [{{name: first}}, {{name: second, inputs: [first]}}]
  output: {{steps: [second]}}
"""
EXPERIMENT = f"""{API}
kind: Experiment
metadata: {{name: split}}
spec:
  default: first
  candidates: [{{name: first, weight: 50}}, {{name: second, weight: 50}}]
"""


def model(name: str) -> str:
    return MODEL.replace("{name}", name)


# Written out of order on purpose: the command applies them servers, models, pipelines, experiments.
EVERYTHING = "---\n".join([EXPERIMENT, PIPELINE, model("first"), SERVER_CONFIG, model("second"), SERVER])


def cli(scheduler: SchedulerProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return run_modelplane(*args, "--scheduler", scheduler.listen)
    return subprocess.run(
        [*MODELPLANE, *args, "--scheduler", scheduler.listen],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("modelplane: error: "), line
    return line.removeprefix("modelplane: error: ")


def until_output(scheduler: SchedulerProcess, args: tuple[str, ...], wanted: str) -> str:
    """The command's output once it holds ``wanted`` (the scheduler settles a moment after it answers)."""
    deadline = time.monotonic() + 30  # a hang guard, not a performance bound
    while True:
        result = cli(scheduler, *args)
        if wanted in result.stdout or time.monotonic() > deadline:
            assert wanted in result.stdout, (result.stdout, result.stderr)
            return result.stdout
        time.sleep(0.2)


def test_one_file_of_every_kind_is_loaded_in_order_and_unloaded_in_reverse(
    scheduler: SchedulerProcess, tmp_path: Path
) -> None:
    manifest = tmp_path / "everything.yaml"
    manifest.write_text(EVERYTHING)
    loaded = ok(cli(scheduler, "load", "-f", str(manifest)))
    assert loaded.splitlines() == [
        "server config mlserver not applied: a ServerConfig is a pod template for Kubernetes (apply it with "
        "kubectl); the Scheduler API has no call for it",
        "server edge expects 2 replica(s)",
        "model first accepted",
        "model second accepted",
        "pipeline chain accepted",
        "experiment split started",
    ]

    status = until_output(scheduler, ("status", "-f", str(manifest)), "ScheduleFailed")
    rows = [line.split()[:3] for line in status.splitlines()]
    assert rows[0] == ["KIND", "NAME", "STATE"]
    assert [row[:2] for row in rows[1:]] == [
        ["ServerConfig", "mlserver"],
        ["Server", "edge"],
        ["Model", "first"],
        ["Model", "second"],
        ["Pipeline", "chain"],
        ["Experiment", "split"],
    ]
    assert rows[2][2] == "NotReady", "no replica of edge is connected"
    assert "0/2 replicas available" in status.splitlines()[2]
    as_json = json.loads(ok(cli(scheduler, "status", "-f", str(manifest), "--output", "json")))
    assert [(r["kind"], r["name"]) for r in as_json][2:] == [
        ("Model", "first"),
        ("Model", "second"),
        ("Pipeline", "chain"),
        ("Experiment", "split"),
    ]
    assert as_json[1]["status"]["expectedReplicas"] == 2
    assert as_json[2]["status"]["modelName"] == "first"

    servers = ok(cli(scheduler, "server", "list")).splitlines()
    assert servers[0].split() == ["SERVER", "REPLICAS", "LOADED", "MODELS"]
    assert servers[1].split() == ["edge", "0/2", "0"]

    unloaded = ok(cli(scheduler, "unload", "-f", str(manifest)))
    assert unloaded.splitlines() == [
        "experiment split stopped",
        "pipeline chain is being unloaded",
        "model second is being unloaded",
        "model first is being unloaded",
        "server edge expects 0 replicas",
        "server config mlserver not applied: a ServerConfig is a pod template for Kubernetes (apply it with "
        "kubectl); the Scheduler API has no call for it",
    ]
    assert ok(cli(scheduler, "server", "status", "edge", "-o", "json")) != ""
    [edge] = json.loads(ok(cli(scheduler, "server", "status", "edge", "-o", "json")))
    assert edge.get("expectedReplicas", 0) == 0
    # Unloading again: every resource is said to be gone already, and that is no failure.
    again = until_output(scheduler, ("unload", "-f", str(manifest)), "model first was not loaded")
    assert "experiment split was not loaded" in again or "experiment split stopped" in again


def test_the_schedulers_own_status_as_json(scheduler: SchedulerProcess) -> None:
    report = json.loads(ok(cli(scheduler, "status", "--output", "json")))
    assert report["address"] == scheduler.listen
    assert report["health"] == "SERVING"
    assert (report["models"], report["servers"]) == (0, 0)
    assert "seldon.mlops.scheduler.Scheduler" in report["services"]


def test_a_manifest_from_stdin(scheduler: SchedulerProcess) -> None:
    loaded = ok(cli(scheduler, "load", "-f", "-", stdin=model("iris") + "---\n" + model("iris2")))
    assert loaded.splitlines() == ["model iris accepted", "model iris2 accepted"]
    listed = until_output(scheduler, ("model", "list"), "ScheduleFailed")
    lines = listed.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "AVAILABLE", "SERVER", "REASON"]
    assert sorted(line.split()[:4] for line in lines[1:]) == [
        ["iris", "v1", "ScheduleFailed", "0/1"],
        ["iris2", "v1", "ScheduleFailed", "0/1"],
    ]
    # `model load -f -` too; and what stdin holds is said to be from there when it is wrong.
    single = ok(cli(scheduler, "model", "load", "-f", "-", stdin=model("iris3")))
    assert single.strip() == "model iris3 accepted; follow it with: modelplane model status iris3 --watch"
    broken = cli(scheduler, "model", "load", "-f", "-", stdin=model("iris4").replace("10Mi", "lots"))
    assert error_line(broken, 2).startswith("standard input: spec.memory")
    broken = cli(scheduler, "pipeline", "load", "-f", "-", stdin="\xff")
    assert error_line(broken, 2).startswith("standard input: ")
    as_yaml = yaml.safe_load(ok(cli(scheduler, "model", "list", "--output", "yaml")))
    assert sorted(m["name"] for m in as_yaml) == ["iris", "iris2", "iris3"]
    assert all(m["replicas"] == 1 for m in as_yaml)


def test_pipeline_commands(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    assert ok(cli(scheduler, "pipeline", "list")).strip() == "no pipelines"
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(PIPELINE)
    assert ok(cli(scheduler, "pipeline", "load", "-f", str(manifest))).strip() == (
        "pipeline chain accepted; follow it with: modelplane pipeline status chain -w"
    )
    status = ok(cli(scheduler, "pipeline", "status", "chain")).splitlines()
    assert status[0].split() == ["PIPELINE", "VERSION", "STATE", "MODELS", "READY", "REASON"]
    assert status[1].split()[:2] == ["chain", "v1"]
    [record] = json.loads(ok(cli(scheduler, "pipeline", "status", "chain", "--output", "json")))
    assert record["pipelineName"] == "chain"
    [version] = record["versions"]
    assert [step["name"] for step in version["pipeline"]["steps"]] == ["first", "second"]
    assert ok(cli(scheduler, "pipeline", "list")).splitlines()[1].split()[0] == "chain"
    # Its models are not there: -w waits and says so when the time is up, status 1.
    waited = cli(scheduler, "pipeline", "status", "chain", "-w", "--wait-timeout", "2")
    assert error_line(waited, 1) == "pipeline chain did not settle within 2s"
    assert "chain" in waited.stdout, "the state it waited in was printed"
    assert ok(cli(scheduler, "pipeline", "unload", "chain")).strip() == "pipeline chain is being unloaded"


def test_experiment_commands(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    assert ok(cli(scheduler, "experiment", "list")).strip() == "no experiments"
    manifest = tmp_path / "experiment.yaml"
    manifest.write_text(EXPERIMENT)
    assert ok(cli(scheduler, "experiment", "start", "-f", str(manifest))).strip() == (
        "experiment split started; follow it with: modelplane experiment status split -w"
    )
    status = ok(cli(scheduler, "experiment", "status", "split")).splitlines()
    assert status[0].split()[:2] == ["EXPERIMENT", "STATE"]
    assert status[1].split()[0] == "split"
    [record] = json.loads(ok(cli(scheduler, "experiment", "status", "split", "-o", "json")))
    assert record["experimentName"] == "split"
    assert record.get("candidatesReady", False) is False, "its models are not loaded"
    waited = cli(scheduler, "experiment", "status", "split", "-w", "--wait-timeout", "2")
    assert error_line(waited, 1) == "experiment split did not settle within 2s"
    assert ok(cli(scheduler, "experiment", "stop", "split")).strip() == "experiment split stopped"


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (("pipeline", "status", "nosuch"), "pipeline 'nosuch' not found"),
        (("pipeline", "status", "nosuch", "-w"), "pipeline 'nosuch' not found"),
        (("pipeline", "unload", "nosuch"), "pipeline 'nosuch' not found"),
        (("experiment", "status", "nosuch"), "experiment 'nosuch' not found"),
        (("experiment", "status", "nosuch", "-w"), "experiment 'nosuch' not found"),
        (("experiment", "stop", "nosuch"), "experiment 'nosuch' not found"),
        (("server", "status", "nosuch"), "server 'nosuch' not found"),
        (("model", "status", "nosuch", "-o", "json"), "model 'nosuch' not found"),
    ],
)
def test_unknown_names_in_words(scheduler: SchedulerProcess, command: tuple[str, ...], words: str) -> None:
    assert error_line(cli(scheduler, *command), 1) == words


def test_a_refused_experiment_is_bad_input_in_words(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "experiment.yaml"
    manifest.write_text(EXPERIMENT.replace("name: split", "name: Bad_Name"))
    line = error_line(cli(scheduler, "experiment", "start", "-f", str(manifest)), 2)
    assert "Bad_Name" in line
    assert "INVALID_ARGUMENT" not in line


def test_a_failed_call_stops_the_load_and_says_what_was_done(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "half.yaml"
    manifest.write_text(model("fine") + "---\n" + model("Not_Valid"))
    result = cli(scheduler, "load", "-f", str(manifest))
    assert result.stdout.splitlines() == ["model fine accepted"]
    line = error_line(result, 2)
    assert line.startswith("model Not_Valid: model name 'Not_Valid' is invalid")
    assert line.endswith("(stopped there: the 1 line(s) above were done)")


BAD_FILES = [
    ("unknown-kind", f"{API}\nkind: Gadget\nmetadata: {{name: g}}\nspec: {{}}\n", "kind must be one of Model"),
    ("no-kind", "metadata: {name: g}\n", "kind must be one of Model, Pipeline, Experiment, Server, ServerConfig"),
    ("twice", model("a") + "---\n" + model("a"), "documents 1 and 2 are both Model 'a': which one is meant?"),
    (
        "bad-second",
        model("a") + "---\n" + model("b").replace("memory: 10Mi", "memory: lots"),
        "document 2 (Model b) spec.memory",
    ),
    ("pipeline-typo", PIPELINE.replace("steps: [{", "stepz: [{"), "unknown field(s) spec.stepz"),
    ("server-bounds", SERVER.replace("replicas: 2", "minReplicas: 3, maxReplicas: 1"), "spec.minReplicas (3)"),
    ("empty", "# nothing\n", "the manifest holds no document"),
    ("text", "just words\n", "a document must be a mapping"),
    ("yaml", "kind: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize(("name", "text", "problem"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_applies_nothing(
    scheduler: SchedulerProcess, tmp_path: Path, name: str, text: str, problem: str
) -> None:
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(text)
    for verb in ("load", "unload", "status"):
        result = cli(scheduler, verb, "-f", str(manifest))
        line = error_line(result, 2)
        assert line.startswith(f"{manifest}: "), line
        assert problem in line, line
        assert result.stdout == ""
    assert ok(cli(scheduler, "model", "list")).strip() == "no models"


def test_the_group_commands_take_their_own_kind_only(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "model.yaml"
    manifest.write_text(model("iris"))
    line = error_line(cli(scheduler, "pipeline", "load", "-f", str(manifest)), 2)
    assert line == f"{manifest}: document 1 is a Model, not a Pipeline; `modelplane load -f` takes every kind"
    line = error_line(cli(scheduler, "experiment", "start", "-f", str(manifest)), 2)
    assert line == f"{manifest}: document 1 is a Model, not an Experiment; `modelplane load -f` takes every kind"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pipeline", "status", "-w"), "-w needs a pipeline name"),
        (("experiment", "status", "-w"), "-w needs an experiment name"),
        (("pipeline", "status", "x", "-w", "--wait-timeout", "nan"), "argument --wait-timeout: nan is out of range"),
        (("experiment", "status", "x", "-w", "--wait-timeout", "-5"), "argument --wait-timeout: -5 is out of range"),
        (("model", "status", "x", "--watch", "--wait-timeout", "0"), "argument --wait-timeout: 0 is out of range"),
        (("pipeline", "list", "--timeout", "nan"), "argument --timeout: nan is out of range"),
        (("server", "list", "--timeout", "-1"), "argument --timeout: -1 is out of range"),
        (("pipeline", "status", "x", "-w", "Bogus"), "argument -w/--wait: invalid choice: 'Bogus'"),
        (("model", "list", "--output", "xml"), "argument -o/--output: invalid choice: 'xml'"),
        (("load",), "the following arguments are required: -f/--file"),
    ],
)
def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--scheduler", "127.0.0.1:1"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# Hypothesis: documents put together from good ones, broken in the ways hands break YAML, fed to the live command.
_GOOD_DOCUMENTS = [SERVER, SERVER_CONFIG, model("m"), PIPELINE, EXPERIMENT]
_BREAKS = st.sampled_from(
    [
        ("kind: ", "kind: X"),
        ("name: ", "name: [1, 2]"),
        ("spec:", "spec: 7\nx:"),
        ("10Mi", "-1Mi"),
        ("replicas: 2", "replicas: two"),
        ("weight: 50", "weight: -5"),
        ("{", "["),
        ("mlops.seldon.io/v1alpha1", "v1"),
        ("steps", "stepz"),
        ("\n", "\n\t"),
    ]
)


@st.composite
def broken_manifests(draw: st.DrawFn) -> str:
    documents = draw(st.lists(st.sampled_from(_GOOD_DOCUMENTS), min_size=1, max_size=4))
    broken = draw(st.integers(0, len(documents) - 1))
    old, new = draw(_BREAKS)
    documents[broken] = documents[broken].replace(old, new, 1)
    noise = draw(st.text(max_size=20))
    return "---\n".join(documents) + draw(st.sampled_from(["", noise, "---\n" + noise]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=broken_manifests())
def test_any_broken_manifest_is_bad_input_or_applied(
    scheduler: SchedulerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """Whatever the file holds: exit status 2 and one line naming the file (nothing applied), or it is applied
    (status 0, a line per document) or refused by the scheduler in words (1 or 2, never a gRPC code); never a
    traceback. The scheduler serves on."""
    manifest = tmp_path / "any.yaml"
    manifest.write_text(text)
    status = main(["load", "-f", str(manifest), "--scheduler", scheduler.listen])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if status == 0:
        assert err == ""
        assert len(out.splitlines()) >= 1
        return
    assert status in (1, 2), (status, err)
    [line] = err.splitlines()
    assert line.startswith("modelplane: error: ")
    for code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "answered"):
        assert code not in line
    if out == "":
        assert status == 2
        assert line.startswith(f"modelplane: error: {manifest}: "), line


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=12), st.floats())
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)
_KINDS = st.sampled_from(["Model", "Pipeline", "Experiment", "Server", "ServerConfig", "Other"])


@st.composite
def resource_like(draw: st.DrawFn) -> object:
    """A document shaped like a resource, with any value anywhere: what the translations must survive."""
    return {
        "apiVersion": draw(st.sampled_from(["mlops.seldon.io/v1alpha1", "v1", None])),
        "kind": draw(_KINDS),
        "metadata": draw(st.one_of(st.fixed_dictionaries({"name": st.text(max_size=12)}), _VALUES)),
        "spec": draw(
            st.one_of(
                st.dictionaries(
                    st.sampled_from(
                        ["replicas", "minReplicas", "maxReplicas", "steps", "candidates", "default", "storageUri"]
                    ),
                    _VALUES,
                    max_size=4,
                ),
                _VALUES,
            )
        ),
    }


@settings(max_examples=400, deadline=None)
@given(documents=st.lists(st.one_of(resource_like(), _VALUES), min_size=1, max_size=3))
def test_any_document_is_a_resource_or_one_line_of_bad_input(documents: list[object]) -> None:
    text = yaml.safe_dump_all(documents)
    try:
        resources = parse_resources(text)
    except ManifestError as error:
        assert "\n" not in str(error)
        assert len(str(error)) < 600
    else:
        assert all(resource.name for resource in resources)


@pytest.mark.parametrize(
    "command",
    [
        ("pipeline", "list"),
        ("pipeline", "status", "chain", "-w"),
        ("experiment", "status"),
        ("model", "list", "-o", "json"),
        ("server", "list"),
        ("load", "-f", "MANIFEST"),
        ("status", "-f", "MANIFEST"),
        ("status", "-o", "yaml"),
    ],
)
def test_an_unreachable_scheduler_in_words(tmp_path: Path, command: tuple[str, ...]) -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on: bound, then released
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manifest = tmp_path / "model.yaml"
    manifest.write_text(model("iris"))
    args = [str(manifest) if part == "MANIFEST" else part for part in command]
    result = run_modelplane(*args, "--scheduler", f"127.0.0.1:{port}", "--timeout", "5")
    line = error_line(result, 1)
    assert f"cannot reach the scheduler at 127.0.0.1:{port}: is `modelplane scheduler` running there?" in line
