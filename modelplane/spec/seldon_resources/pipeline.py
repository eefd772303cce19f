"""Seldon's Pipeline resource to the Scheduler API's Pipeline (the field map is in the package's docstring)."""

from __future__ import annotations

from typing import Any

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.seldon_resources.fields import (
    MAX_UINT32,
    Fields,
    ResourceSpecError,
    Translation,
    checked_limits,
    kubernetes_meta,
    name_of,
    resource_parts,
    shown,
)

_JOINS = {"inner": pb.PipelineStep.INNER, "outer": pb.PipelineStep.OUTER, "any": pb.PipelineStep.ANY}


def _join(fields: Fields, seldon_key: str, proto_key: str | None = None) -> Any:
    """A join type (inner, outer, any; default inner) under Seldon's key or the proto's (not both)."""
    values = [(key, fields.text(key)) for key in (seldon_key, proto_key) if key is not None]
    given = [(key, value) for key, value in values if value is not None]
    if len(given) > 1:
        raise ResourceSpecError(f"{fields.path(seldon_key)} and {fields.path(str(proto_key))} are the same; give one")
    if not given:
        return pb.PipelineStep.INNER
    key, value = given[0]
    join = _JOINS.get(str(value).lower())
    if join is None:
        raise ResourceSpecError(f"{fields.path(key)} must be inner, outer or any, not {shown(value)}")
    return join


def pipeline_from_resource(resource: object) -> Translation[pb.Pipeline]:
    """The LoadPipeline message of a Pipeline resource; raises ResourceSpecError naming the first bad field.

    Whether the steps make a valid pipeline (references, cycles) is the scheduler's to say
    (modelplane/spec/pipelines.py), with FAILED_PRECONDITION as Seldon's does.
    """
    metadata, spec, unknown = resource_parts(resource, "Pipeline")
    pipeline = pb.Pipeline(name=name_of(metadata))
    kubernetes = kubernetes_meta(metadata)
    if kubernetes is not None:
        pipeline.kubernetesMeta.CopyFrom(kubernetes)
    unmapped: list[str] = []
    for step in spec.items("steps"):
        added = pipeline.steps.add(
            name=step.required_text("name"),
            inputs=step.texts("inputs"),
            triggers=step.texts("triggers"),
            tensorMap=step.text_map("tensorMap"),
            inputsJoin=_join(step, "inputsJoinType", "inputsJoin"),
            triggersJoin=_join(step, "triggersJoinType", "triggersJoin"),
        )
        window = step.whole("joinWindowMs", 0, MAX_UINT32)
        if window is not None:
            added.joinWindowMs = window
        batch = step.mapping("batch")
        if batch is not None:
            size, batch_window = batch.whole("size", 0, MAX_UINT32), batch.whole("windowMs", 0, MAX_UINT32)
            if size is not None:
                added.batch.size = size
            if batch_window is not None:
                added.batch.windowMs = batch_window
            if batch.flag("rolling"):
                unmapped.append(f"{batch.path('rolling')}")
            batch.done()
        step.done()
    pipeline_input = spec.mapping("input")
    if pipeline_input is not None:
        given = pb.PipelineInput(
            externalInputs=pipeline_input.texts("externalInputs"),
            externalTriggers=pipeline_input.texts("externalTriggers"),
            joinType=_join(pipeline_input, "joinType"),
            triggersJoin=_join(pipeline_input, "triggersJoinType", "triggersJoin"),
            tensorMap=pipeline_input.text_map("tensorMap"),
        )
        window = pipeline_input.whole("joinWindowMs", 0, MAX_UINT32)
        if window is not None:
            given.joinWindowMs = window
        pipeline.input.CopyFrom(given)
        pipeline_input.done()
    output = spec.mapping("output")
    if output is not None:
        pipeline.output.CopyFrom(
            pb.PipelineOutput(
                steps=output.texts("steps"),
                joinWindowMs=output.whole("joinWindowMs", 0, MAX_UINT32) or 0,
                stepsJoin=_join(output, "stepsJoin", "stepsJoinType"),
                tensorMap=output.text_map("tensorMap"),
            )
        )
        output.done()
    dataflow = spec.mapping("dataflow")
    if dataflow is not None:
        pipeline.dataflowSpec.CopyFrom(pb.DataflowSpec(cleanTopicsOnDelete=bool(dataflow.flag("cleanTopicsOnDelete"))))
        dataflow.done()
    pipeline.allowCycles = bool(spec.flag("allowCycles"))
    pipeline.maxStepRevisits = spec.whole("maxStepRevisits", 0, MAX_UINT32) or 0
    spec.done()
    spec_unknown = [field for field in unknown if field.startswith("spec.")]
    return Translation(checked_limits(pipeline, "pipeline"), tuple(spec_unknown), tuple(unmapped))
