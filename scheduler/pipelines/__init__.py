"""The pipeline control plane's domain: validation, versions and their states, durable records.

Pure and synchronous; the scheduler's servicers wire it to the Scheduler API's pipeline RPCs.
"""

from modelplane.spec.pipelines import (
    MAX_STEP_REVISITS,
    Reference,
    parse_external_reference,
    parse_reference,
    pipeline_models,
    validate_pipeline,
)
from scheduler.pipelines.pipeline_records import PipelineRecord, PipelineVersion
from scheduler.pipelines.pipeline_registry import PipelineRegistry, new_uid, status_response, version_state
from scheduler.pipelines.pipeline_state import ENDING, LIVE, TRANSITIONS, PipelineStatus, check_transition

__all__ = [
    "ENDING",
    "LIVE",
    "MAX_STEP_REVISITS",
    "TRANSITIONS",
    "PipelineRecord",
    "PipelineRegistry",
    "PipelineStatus",
    "PipelineVersion",
    "Reference",
    "check_transition",
    "new_uid",
    "parse_external_reference",
    "parse_reference",
    "pipeline_models",
    "status_response",
    "validate_pipeline",
    "version_state",
]
