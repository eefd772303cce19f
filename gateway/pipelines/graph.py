"""A pipeline compiled once per version into the graph the executor walks for every request.

The spec's references are parsed with the grammar the scheduler validates by (:mod:`modelplane.spec.pipelines`), so
the gateway and the scheduler can never disagree on what ``a.outputs.t`` means. What compiling decides:

* Each step runs the model of its own name (Seldon's rule; ``PipelineStep`` has no model field).
* A step without ``inputs`` reads the pipeline's inputs (``<pipeline>.inputs``), as in Seldon.
* A pipeline without ``output`` answers with its last step's outputs.
* ``tensorMap`` keys are the full reference of one tensor, ``<source>.<side>.<tensor>`` (e.g.
  ``tfsimple1.outputs.OUTPUT0`` or ``mypipeline.inputs.predict``), as in Seldon: a tensor read from that
  source is renamed wherever the step's (or the output's) references pick it up, whole side or one tensor.
* Only the steps the output depends on (through inputs or triggers, transitively) are run: a synchronous
  call has nobody to hand a side branch's result to (e.g. a drift detector hanging off a step). They are
  listed in :attr:`PipelineGraph.unused_steps`.
* ``input.externalInputs``/``externalTriggers`` (data from other pipelines' Kafka streams) cannot be read by a
  synchronous call: compiling such a pipeline raises InferenceError(501).
* ``batch`` (Seldon batches several requests into one model call) does not apply to one synchronous
  request and is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.inference_types import InferenceError
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import FailedPrecondition
from modelplane.spec.pipelines import Reference, Side, parse_reference, validate_pipeline

# Seldon leaves the default join window to its dataflow engine's configuration; ours is the executor's.
DEFAULT_JOIN_WINDOW_MS = 1000

# A source of tensors: (step name, side), or (None, "inputs") for the pipeline's own inputs.
SourceKey = tuple[str | None, Side]
PIPELINE_INPUTS: SourceKey = (None, "inputs")


class JoinType(enum.Enum):
    """How a step combines its sources. The three proto enums (step, input, output) share these numbers."""

    INNER = 0  # every source must deliver
    OUTER = 1  # wait up to the window for all, then go with what arrived (at least one)
    ANY = 2  # go with the first that arrives

    @classmethod
    def from_proto(cls, value: int, where: str) -> JoinType:
        try:
            return cls(value)
        except ValueError:
            # proto3 enums are open: a newer client may send a number this version does not know.
            raise InferenceError(500, f"{where}: unknown join type {value}") from None


@dataclass(frozen=True, slots=True)
class Port:
    """One reference of a step (or of the output): where it reads from and how it is written in the spec."""

    text: str
    reference: Reference

    @property
    def source(self) -> SourceKey:
        return (self.reference.step, self.reference.side)

    @property
    def tensor(self) -> str | None:
        return self.reference.tensor

    def key_prefix(self, pipeline: str) -> str:
        """The ``tensorMap`` key of a tensor read here is this prefix + ``.`` + the tensor's name."""
        head = pipeline if self.reference.step is None else self.reference.step
        return f"{head}.{self.reference.side}"


@dataclass(frozen=True, slots=True)
class Consumer:
    """Something that joins sources: a step (which then calls its model) or the pipeline's output."""

    name: str  # the step's name; OUTPUT_NAME for the output
    inputs: tuple[Port, ...]
    triggers: tuple[Port, ...]
    inputs_join: JoinType
    triggers_join: JoinType
    window_s: float
    tensor_map: Mapping[str, str]

    @property
    def model(self) -> str:
        """The model a step calls: the step's own name."""
        return self.name


OUTPUT_NAME = "<output>"  # not a valid step name, so it never collides with one


@dataclass(frozen=True, slots=True)
class PipelineGraph:
    """A pipeline version ready to execute: its steps (in spec order, only those the output needs) and output."""

    name: str
    version: int
    steps: Mapping[str, Consumer]
    output: Consumer
    allow_cycles: bool
    max_step_revisits: int
    unused_steps: tuple[str, ...] = ()
    # Source -> (consumer name, "inputs"/"triggers", port index) of every port reading it.
    readers: Mapping[SourceKey, tuple[tuple[str, str, int], ...]] = field(default_factory=dict)

    def consumer(self, name: str) -> Consumer:
        return self.output if name == OUTPUT_NAME else self.steps[name]


def _window_s(value_ms: int | None, default_ms: int) -> float:
    return (default_ms if value_ms is None else value_ms) / 1000


def _ports(texts: list[str], pipeline: str) -> tuple[Port, ...]:
    return tuple(Port(text, parse_reference(text, pipeline)) for text in texts)


def _step(step: pb.PipelineStep, pipeline: str, default_window_ms: int) -> Consumer:
    inputs = list(step.inputs) or [f"{pipeline}.inputs"]
    return Consumer(
        name=step.name,
        inputs=_ports(inputs, pipeline),
        triggers=_ports(list(step.triggers), pipeline),
        inputs_join=JoinType.from_proto(step.inputsJoin, f"pipeline {pipeline!r} step {step.name!r} inputsJoin"),
        triggers_join=JoinType.from_proto(step.triggersJoin, f"pipeline {pipeline!r} step {step.name!r} triggersJoin"),
        # An explicit 0 is honoured for a step (the field is optional, so "unset" is distinguishable).
        window_s=_window_s(step.joinWindowMs if step.HasField("joinWindowMs") else None, default_window_ms),
        tensor_map=dict(step.tensorMap),
    )


def _output(pipeline: pb.Pipeline, default_window_ms: int) -> Consumer:
    if pipeline.HasField("output") and pipeline.output.steps:
        spec = pipeline.output
        texts = list(spec.steps)
        join = JoinType.from_proto(spec.stepsJoin, f"pipeline {pipeline.name!r} output stepsJoin")
        # The output's window is a plain uint32 whose default is 0, so 0 cannot mean "no wait": it means unset.
        window = _window_s(spec.joinWindowMs or None, default_window_ms)
        tensor_map: dict[str, str] = dict(spec.tensorMap)
    else:
        texts, join, window, tensor_map = [pipeline.steps[-1].name], JoinType.INNER, 0.0, {}
    return Consumer(OUTPUT_NAME, _ports(texts, pipeline.name), (), join, JoinType.INNER, window, tensor_map)


def _needed_steps(steps: Mapping[str, Consumer], output: Consumer) -> set[str]:
    """The steps the output depends on: reading ``s.outputs`` or ``s.inputs`` (or a trigger) needs ``s`` to run."""
    needed: set[str] = set()
    todo = [port.reference.step for port in output.inputs]
    while todo:
        name = todo.pop()
        if name is None or name in needed:
            continue
        needed.add(name)
        step = steps[name]
        todo.extend(port.reference.step for port in (*step.inputs, *step.triggers))
    return needed


def compile_pipeline(pipeline: pb.Pipeline, *, default_join_window_ms: int = DEFAULT_JOIN_WINDOW_MS) -> PipelineGraph:
    """Compile ``pipeline``. Raises InferenceError: 500 if the spec is invalid (the scheduler should have
    refused it), 501 if it reads other pipelines (``externalInputs``/``externalTriggers``)."""
    try:
        validate_pipeline(pipeline)
    except FailedPrecondition as error:
        raise InferenceError(500, f"pipeline {pipeline.name!r} cannot be executed: {error}") from None
    if pipeline.HasField("input") and (pipeline.input.externalInputs or pipeline.input.externalTriggers):
        external = [*pipeline.input.externalInputs, *pipeline.input.externalTriggers]
        raise InferenceError(
            501,
            f"pipeline {pipeline.name!r} reads other pipelines ({', '.join(external)}); the gateway runs a pipeline "
            "within one request and cannot wait for another pipeline's stream, so such pipelines run on Kafka only",
        )
    name = pipeline.name
    all_steps = {step.name: _step(step, name, default_join_window_ms) for step in pipeline.steps}
    output = _output(pipeline, default_join_window_ms)
    needed = _needed_steps(all_steps, output)
    steps = {step_name: step for step_name, step in all_steps.items() if step_name in needed}
    readers: dict[SourceKey, list[tuple[str, str, int]]] = {}
    for consumer in [*steps.values(), output]:
        for kind, ports in (("inputs", consumer.inputs), ("triggers", consumer.triggers)):
            for index, port in enumerate(ports):
                readers.setdefault(port.source, []).append((consumer.name, kind, index))
    return PipelineGraph(
        name=name,
        version=pipeline.version,
        steps=steps,
        output=output,
        allow_cycles=pipeline.allowCycles,
        max_step_revisits=pipeline.maxStepRevisits,
        unused_steps=tuple(step_name for step_name in all_steps if step_name not in needed),
        readers={source: tuple(entries) for source, entries in readers.items()},
    )
