"""The model registry's loop in one command: ``./run registry-demo [--once]``.

It starts ``modelplane up`` (scheduler, agent, a local MLServer, gateway and the model registry, on free
127.0.0.1 ports, state in a work folder, default ``.modelplane/registry-demo``, emptied first) and then does, with
the registry's own command line (``modelplane registry experiments|splits|models ...``, each command printed):

1. the dataset: scikit-learn's iris (150 flowers: four measurements and the species) as a CSV file under the
   registry's datasets root, registered as the experiment ``iris`` that predicts ``species``;
2. a split: 80% of the rows to train on, 20% kept aside to test, at random with a fixed seed (the same seed gives
   the same split), with per-field statistics of both halves;
3. two models on that split with different algorithms, a logistic regression and a one-question decision tree,
   each trained by the trainer's own run;
4. their metrics compared (``models list --sort accuracy``: the best first);
5. the better one deployed on up's MLServer, and three flowers sent through the gateway for a prediction.

``--once`` stops everything afterwards and exits 0 when every step worked, 1 when one did not (its error and the
log to read are printed); without it everything keeps running until Ctrl-C. Every process is stopped by PID.
It reuses the training demo's process handling (samples/training_demo.py, beside it); run it with the project's
venv:

    .venv/bin/python samples/registry_demo.py [--once] [--work-dir DIR]
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from training_demo import (
    CHILD_ENV,
    FLOWERS,
    IRIS_FEATURES,
    LOOPBACK,
    MODELPLANE,
    DemoError,
    KeptRunning,
    Started,
    demo_main,
    detail,
    infer_through_gateway,
    run_demo,
    say,
    wait_for,
    write_iris_csv,
)

EXPERIMENT: Final = "iris"
SRCPATH: Final = "flowers/iris.csv"
SPLIT_SEED: Final = 7
# (name, algorithm, hyper-parameters, what it is in words)
MODELS: Final = (
    ("logistic", "logistic_regression", ("max_iter=500",), "a logistic regression"),
    ("stump", "decision_tree", ("max_depth=1",), "a decision tree allowed one question (max_depth=1)"),
)
COMMAND_TIMEOUT: Final = 900.0  # a hang guard for one command on a loaded machine, not a performance bound


@dataclass(frozen=True)
class Up:
    process: subprocess.Popen[bytes]
    gateway: str
    registry: str  # http://HOST:PORT
    log: Path


def start_up(started: Started, folder: Path, datasets: Path) -> Up:
    ready = folder / "up.json"
    log = folder / "up.log"
    command = [
        *MODELPLANE,
        "up",
        f"--state-dir={folder / 'state'}",
        *(f"--{flag}={LOOPBACK}:0" for flag in ("listen", "agent-listen", "proxy-http", "proxy-grpc", "gateway")),
        f"--dashboard-listen={LOOPBACK}:0",
        f"--registry-listen={LOOPBACK}:0",
        f"--registry-datasets-root={datasets}",
        f"--ready-file={ready}",
    ]
    # SIGINT as a Ctrl-C: the registry, the gateway and the agent stop (models unloaded, MLServer stopped), then
    # the scheduler.
    process = started.spawn("modelplane up", command, log, stop_signal=signal.SIGINT, stop_timeout=60)
    wait_for("modelplane up", lambda: ready.exists() and ready.read_text().endswith("\n"), process, log, 600)
    addresses = json.loads(ready.read_text())
    return Up(process, addresses["gateway"], f"http://{addresses['registry']}", log)


def registry_command(up: Up, *arguments: str) -> str:
    """Run ``modelplane registry ARGUMENTS`` against up's registry, printed as a user would type it; its output."""
    detail(f"$ modelplane registry {shlex.join(arguments)}")
    try:
        done = subprocess.run(  # noqa: S603 -- our own command line and arguments
            [*MODELPLANE, "registry", *arguments, f"--registry={up.registry}"],
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DemoError(f"modelplane registry {shlex.join(arguments)}: no answer in {COMMAND_TIMEOUT:g}s") from None
    if done.returncode != 0:
        raise DemoError(
            f"modelplane registry {shlex.join(arguments)} exited {done.returncode}: {done.stderr.strip()}\n"
            f"(the registry logs to {up.log})"
        )
    return done.stdout


def show(text: str, max_lines: int = 40) -> None:
    lines = text.rstrip("\n").splitlines()
    for line in lines[:max_lines]:
        detail(f"  {line}")
    if len(lines) > max_lines:
        detail(f"  ... ({len(lines) - max_lines} more lines)")


def as_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise DemoError(f"expected JSON from the registry's command line, got: {text[:300]}") from None


def split_summary(split: dict[str, Any]) -> None:
    """The split's statistics in a few lines: each field's count, mean (or values) and train/test similarity."""
    detail(f"  {'field':<14} {'train':>6} {'test':>6}  {'similarity (1: alike)':<22} train vs test")
    for stats in split["stats"]:
        total = stats["numTotal"]
        if "mean" in stats:
            compared = f"mean {stats['mean']['train']:.2f} vs {stats['mean']['test']:.2f}"
        else:
            compared = f"{stats['unique']['train']} vs {stats['unique']['test']} distinct values"
        similarity = stats.get("similarity")
        shown = f"{similarity:.3f}" if isinstance(similarity, int | float) else "-"
        detail(f"  {stats['field']:<14} {total['train']:>6} {total['test']:>6}  {shown:<22} {compared}")


def registry_flow(up: Up, datasets: Path) -> None:
    say(f"1. The dataset: {datasets / SRCPATH} (scikit-learn's iris: 150 flowers, 4 measurements, the species)")
    (datasets / SRCPATH).parent.mkdir(parents=True)
    write_iris_csv(datasets / SRCPATH)
    detail("registered as the experiment iris, which predicts the column species (text: a classification)")
    show(
        registry_command(
            up,
            *("experiments", "put", EXPERIMENT, "--srcpath", SRCPATH, "--outcome", "species"),
            *("--outcome-type", "string", "--description", "iris flowers: species from four measurements"),
        )
    )

    say(f"2. Split it: 80% of the rows to train on, 20% kept aside to test, at random with seed {SPLIT_SEED}")
    settled = as_json(
        registry_command(
            up,
            *("splits", "create", EXPERIMENT, "--type", "random", "--percent", "80"),
            *("--seed", str(SPLIT_SEED), "--wait"),
        )
    )
    show(json.dumps(settled))
    split_id = str(settled["id"])
    detail("what each half holds (the same seed always gives the same split):")
    split_summary(as_json(registry_command(up, "splits", "get", EXPERIMENT, split_id, "--output", "json")))

    say("3. Two models on that split, with different algorithms, each trained by the trainer")
    for name, algorithm, hyperparameters, words in MODELS:
        detail(f"{name}: {words}")
        model = as_json(registry_command(up, "models", "create", EXPERIMENT, "--split", split_id, "--name", name))
        parameters = [argument for value in hyperparameters for argument in ("--param", value)]
        trained = as_json(
            registry_command(
                up, "models", "train", EXPERIMENT, str(model["id"]), "--algorithm", algorithm, *parameters, "--wait"
            )
        )
        metrics = trained.get("evaluationMetrics") or {}
        detail(f"  {trained['status']}: " + ", ".join(f"{key} {value:.3f}" for key, value in sorted(metrics.items())))

    say("4. Compare them by accuracy on the 30 test rows (the best first)")
    show(registry_command(up, "models", "list", EXPERIMENT, "--sort", "accuracy"))
    ranked = as_json(registry_command(up, "models", "list", EXPERIMENT, "--sort", "accuracy", "--output", "json"))
    best = ranked[0]
    accuracy = best["evaluationMetrics"]["accuracy"]
    detail(f"the better one: {best['name']} ({best['algorithm']}), accuracy {accuracy:.3f}")

    say(f"5. Deploy {best['name']} on up's MLServer (answered once it serves)")
    deployed = as_json(registry_command(up, "models", "deploy", EXPERIMENT, str(best["id"])))
    name = str(deployed["servingName"])
    detail(f"  {deployed['status']}: served as {name}")

    request = {
        "inputs": [
            {"name": column, "shape": [len(FLOWERS)], "datatype": "FP64", "data": [row[index] for row in FLOWERS]}
            for index, column in enumerate(IRIS_FEATURES)
        ]
    }
    say(f"6. Predict through the gateway: POST http://{up.gateway}/v2/models/{name}/infer")
    answer = asyncio.run(infer_through_gateway(up.gateway, name, request, 60))
    predicted = next((output["data"] for output in answer["outputs"] if output["name"] == "predict"), None)
    recorded = recorded_species(datasets / SRCPATH)
    if not isinstance(predicted, list) or len(predicted) != len(FLOWERS):
        raise DemoError(f"the gateway's answer has no prediction per flower: {json.dumps(answer)[:300]}")
    detail(f"  {'flower (sepal, petal: length width)':<38} {'predicted':<12} in the dataset")
    for flower, species in zip(FLOWERS, predicted, strict=True):
        detail(f"  {' '.join(map(str, flower)):<38} {species!s:<12} {recorded.get(tuple(flower), '?')}")


def recorded_species(csv: Path) -> dict[tuple[float, ...], str]:
    """The species the dataset records for each flower's measurements (to print beside the prediction)."""
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    columns = [header.index(feature) for feature in IRIS_FEATURES]
    species = header.index("species")
    recorded: dict[tuple[float, ...], str] = {}
    for line in lines[1:]:
        cells = line.split(",")
        recorded.setdefault(tuple(float(cells[column]) for column in columns), cells[species])
    return recorded


def run(work: Path, once: bool) -> int:
    return run_demo(work, once, "registry demo", lambda started: _registry_stack(started, work))


def _registry_stack(started: Started, work: Path) -> KeptRunning:
    datasets = work / "datasets"
    say(f"starting modelplane up with its registry (work folder {work}; the first start creates MLServer's venv)")
    up = start_up(started, work, datasets)
    detail(f"registry   {up.registry} (REST API: /experiments, /openapi.json)")
    detail(f"gateway    http://{up.gateway}")
    detail(f"log        {up.log}")
    detail(f"each command below is given --registry {up.registry} (`modelplane up`'s default needs none)")
    registry_flow(up, datasets)
    return KeptRunning(up.process, up.log, [f"registry {up.registry}   gateway http://{up.gateway}   logs {up.log}"])


def main(argv: list[str] | None = None) -> int:
    return demo_main(
        argv,
        name="registry-demo",
        doc=__doc__,
        work_dir=Path(".modelplane/registry-demo"),
        work_help="emptied, then holds up's state, the dataset and the logs",
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
