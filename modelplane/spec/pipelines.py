"""Validation of a pipeline spec, and the grammar of the references its steps use.

References inside a pipeline (``step.inputs``, ``step.triggers``, ``output.steps``)::

    step                      the outputs of ``step``
    step.outputs[.tensor]     the outputs of ``step`` (or one tensor of them)
    step.inputs[.tensor]      the inputs ``step`` received (or one tensor of them)
    pipeline                  this pipeline's inputs (``pipeline`` is this pipeline's own name)
    pipeline.inputs[.tensor]  this pipeline's inputs (or one tensor of them)

References to other pipelines (``input.externalInputs`` and ``input.externalTriggers``)::

    other[.step.S][.outputs|.inputs[.tensor]]

``other`` alone means that pipeline's outputs; with ``.step.S`` it means step ``S`` of that pipeline.

Every violation raises :class:`~modelplane.spec.errors.FailedPrecondition` (the code Seldon uses for an invalid
pipeline, which its clients read as "do not retry"), with a message naming the offending step or reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import FailedPrecondition, InvalidArgument
from modelplane.spec.limits import MAX_PIPELINE_SPEC_BYTES, MAX_REFERENCE_CHARS, check_fields, shown
from modelplane.spec.names import check_kubernetes_meta, check_name

__all__ = [
    "MAX_STEP_REVISITS",
    "Reference",
    "Side",
    "parse_external_reference",
    "parse_reference",
    "pipeline_models",
    "validate_pipeline",
]

Side = Literal["inputs", "outputs"]

# Counts and lengths are modelplane/spec/limits.py's, checked by check_fields (FIELD_RULES) before anything here
# (MAX_REFERENCES: per list, i.e. a step's inputs, its triggers, the output's steps, external inputs/triggers).
MAX_STEP_REVISITS = 1000

_SIDES: tuple[Side, ...] = ("inputs", "outputs")


@dataclass(frozen=True, slots=True)
class Reference:
    """Where data comes from: a pipeline's inputs (``step`` None) or a step's inputs or outputs."""

    pipeline: str
    step: str | None
    side: Side
    tensor: str | None = None

    def __str__(self) -> str:
        head = self.pipeline if self.step is None else f"{self.pipeline}.step.{self.step}"
        return f"{head}.{self.side}" + (f".{self.tensor}" if self.tensor is not None else "")

    @property
    def source(self) -> tuple[str, str | None, Side]:
        """The stream the reference reads, whatever tensor of it: (pipeline, step, side)."""
        return (self.pipeline, self.step, self.side)


def _fail(message: str) -> FailedPrecondition:
    return FailedPrecondition(message)


def _check_name(name: str, what: str, context: str) -> None:
    try:
        check_name(name, what=what)
    except InvalidArgument as error:
        raise _fail(f"{context}: {error}") from None


def _check_text(text: str, what: str) -> None:
    if not text:
        raise _fail(f"{what} is empty")
    if len(text) > MAX_REFERENCE_CHARS:
        raise _fail(f"{what} {text[:40]!r}... is longer than {MAX_REFERENCE_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise _fail(f"{what} {shown(text)} contains white space or a control character")


def _side_and_tensor(parts: list[str], text: str) -> tuple[Side, str | None]:
    """``[]`` -> outputs; ``[side]``; ``[side, tensor...]`` (a tensor name may itself contain dots)."""
    if not parts:
        return "outputs", None
    side = parts[0]
    if side == "inputs":
        chosen: Side = "inputs"
    elif side == "outputs":
        chosen = "outputs"
    else:
        raise _fail(f"reference {text!r}: expected 'inputs' or 'outputs' after the name, got {side!r}")
    tensor = ".".join(parts[1:]) if len(parts) > 1 else None
    if tensor is not None and (not tensor or any(not p for p in parts[1:])):
        raise _fail(f"reference {text!r} has an empty tensor name")
    return chosen, tensor


def parse_reference(text: str, pipeline_name: str) -> Reference:
    """Parse a reference used inside pipeline ``pipeline_name`` (see the module docstring).

    Only the grammar is checked here; whether the step exists is :func:`validate_pipeline`'s business.
    """
    _check_text(text, "reference")
    parts = text.split(".")
    if any(not p for p in parts):
        raise _fail(f"reference {text!r} has an empty part (check the dots)")
    head, rest = parts[0], parts[1:]
    if head == pipeline_name:
        if not rest:
            return Reference(pipeline_name, None, "inputs")
        side, tensor = _side_and_tensor(rest, text)
        if side != "inputs":
            raise _fail(
                f"reference {text!r}: a step can only read the pipeline's inputs "
                f"('{pipeline_name}' or '{pipeline_name}.inputs[.tensor]')"
            )
        return Reference(pipeline_name, None, side, tensor)
    _check_name(head, "step", f"reference {text!r}")
    side, tensor = _side_and_tensor(rest, text)
    return Reference(pipeline_name, head, side, tensor)


def parse_external_reference(text: str, pipeline_name: str) -> Reference:
    """Parse an ``input.externalInputs``/``externalTriggers`` entry of pipeline ``pipeline_name``."""
    _check_text(text, "external reference")
    parts = text.split(".")
    if any(not p for p in parts):
        raise _fail(f"external reference {text!r} has an empty part (check the dots)")
    other, rest = parts[0], parts[1:]
    _check_name(other, "pipeline", f"external reference {text!r}")
    if other == pipeline_name:
        raise _fail(f"external reference {text!r} names this pipeline; use '{pipeline_name}.inputs' in a step")
    step: str | None = None
    if rest and rest[0] == "step":
        if len(rest) < 2:
            raise _fail(f"external reference {text!r}: expected a step name after 'step'")
        step = rest[1]
        _check_name(step, "step", f"external reference {text!r}")
        rest = rest[2:]
    side, tensor = _side_and_tensor(rest, text)
    return Reference(other, step, side, tensor)


def pipeline_models(pipeline: pb.Pipeline) -> set[str]:
    """The model names the pipeline's steps use: each step runs the model of its own name."""
    return {step.name for step in pipeline.steps}


def _check_tensor_map(tensor_map: Mapping[str, str], where: str) -> None:
    for key, value in tensor_map.items():
        if not key or not value:
            raise _fail(f"tensorMap of {where} has an empty key or value ({key!r} -> {value!r})")


def _check_step_names(pipeline: pb.Pipeline) -> set[str]:
    names: set[str] = set()
    for index, step in enumerate(pipeline.steps):
        _check_name(step.name, "step", f"pipeline {pipeline.name!r} step #{index}")
        if step.name in names:
            raise _fail(f"pipeline {pipeline.name!r}: step name {step.name!r} is used more than once")
        if step.name == pipeline.name:
            raise _fail(
                f"pipeline {pipeline.name!r}: step {step.name!r} has the pipeline's name, "
                "which references use for the pipeline's inputs"
            )
        names.add(step.name)
    return names


def _step_references(texts: Iterable[str], pipeline: pb.Pipeline, steps: set[str], what: str) -> list[Reference]:
    references: list[Reference] = []
    for text in texts:
        try:
            reference = parse_reference(text, pipeline.name)
        except FailedPrecondition as error:
            raise _fail(f"pipeline {pipeline.name!r} {what}: {error}") from None
        if reference.step is not None and reference.step not in steps:
            raise _fail(
                f"pipeline {pipeline.name!r} {what}: reference {text!r} names step {reference.step!r}, "
                "which is not a step of this pipeline"
            )
        if reference in references:
            raise _fail(f"pipeline {pipeline.name!r} {what}: reference {text!r} is listed twice")
        references.append(reference)
    return references


def _find_cycle(edges: Mapping[str, set[str]]) -> list[str] | None:
    """A cycle in the directed graph (as a closed path), or None. Iterative, so depth is not an issue."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    for root in sorted(edges):
        if colour[root] != white:
            continue
        path: list[str] = [root]
        stack: list[list[str]] = [sorted(edges[root])]
        colour[root] = grey
        while stack:
            if not stack[-1]:
                stack.pop()
                colour[path.pop()] = black
                continue
            node = stack[-1].pop()
            if colour[node] == grey:
                return [*path[path.index(node) :], node]
            if colour[node] == white:
                colour[node] = grey
                path.append(node)
                stack.append(sorted(edges[node]))
    return None


def _check_steps(pipeline: pb.Pipeline, steps: set[str]) -> dict[str, set[str]]:
    """Check every step's references; return the edges from a step to the steps reading it."""
    name = pipeline.name
    readers: dict[str, set[str]] = {step: set() for step in steps}
    for step in pipeline.steps:
        where = f"step {step.name!r}"
        inputs = _step_references(step.inputs, pipeline, steps, f"{where} inputs")
        triggers = _step_references(step.triggers, pipeline, steps, f"{where} triggers")
        for trigger in triggers:
            if trigger in inputs:
                raise _fail(f"pipeline {name!r} {where}: {trigger} is both an input and a trigger")
        _check_tensor_map(step.tensorMap, f"pipeline {name!r} {where}")
        for reference in [*inputs, *triggers]:
            if reference.step is not None:
                readers[reference.step].add(step.name)
    return readers


def _check_output(pipeline: pb.Pipeline, steps: set[str]) -> None:
    name = pipeline.name
    for reference in _step_references(pipeline.output.steps, pipeline, steps, "output"):
        if reference.step is None:
            raise _fail(f"pipeline {name!r} output: {reference} is the pipeline's inputs, not a step")
    _check_tensor_map(pipeline.output.tensorMap, f"pipeline {name!r} output")


def _check_input(pipeline: pb.Pipeline) -> None:
    name = pipeline.name
    for field, texts in (
        ("externalInputs", pipeline.input.externalInputs),
        ("externalTriggers", pipeline.input.externalTriggers),
    ):
        seen: set[Reference] = set()
        for text in texts:
            try:
                reference = parse_external_reference(text, name)
            except FailedPrecondition as error:
                raise _fail(f"pipeline {name!r} input {field}: {error}") from None
            if reference in seen:
                raise _fail(f"pipeline {name!r} input {field}: {text!r} is listed twice")
            seen.add(reference)
    _check_tensor_map(pipeline.input.tensorMap, f"pipeline {name!r} input")


def validate_pipeline(pipeline: pb.Pipeline) -> None:
    """Raise FailedPrecondition naming the first problem found in ``pipeline``; return None if valid."""
    _check_name(pipeline.name, "pipeline", "invalid pipeline")
    name = pipeline.name
    check_fields(pipeline, f"pipeline {name!r}", FailedPrecondition)
    size = pipeline.ByteSize()
    if size > MAX_PIPELINE_SPEC_BYTES:
        raise _fail(
            f"pipeline {name!r} is {size} bytes serialized; the limit is {MAX_PIPELINE_SPEC_BYTES} bytes, so that "
            "the status of every version kept fits a client's 4 MB"
        )
    if pipeline.HasField("kubernetesMeta"):
        check_kubernetes_meta(pipeline.kubernetesMeta, f"pipeline {name!r}", FailedPrecondition)
    if not pipeline.steps:
        raise _fail(f"pipeline {name!r} has no steps")
    steps = _check_step_names(pipeline)
    # Cycles follow both data (inputs) and triggers.
    readers = _check_steps(pipeline, steps)
    if pipeline.HasField("output"):
        _check_output(pipeline, steps)
    if pipeline.HasField("input"):
        _check_input(pipeline)
    if pipeline.allowCycles:
        if not 0 < pipeline.maxStepRevisits <= MAX_STEP_REVISITS:
            raise _fail(
                f"pipeline {name!r} allows cycles, so maxStepRevisits must be between 1 and {MAX_STEP_REVISITS} "
                f"(got {pipeline.maxStepRevisits})"
            )
        return
    cycle = _find_cycle(readers)
    if cycle is not None:
        raise _fail(
            f"pipeline {name!r} has a cycle through steps {' -> '.join(cycle)}; "
            "set allowCycles (with maxStepRevisits) if that is intended"
        )
