"""Every limit on what the Scheduler API accepts, and the checks that apply them: the one place to read them.

A request field is checked where it is accepted, before anything is stored: its length (in characters),
its characters (no NUL or other control characters, no line or paragraph separators; only the free-text
kinds marked "lines" may hold tab, newline and carriage return), and for repeated and map fields their count.
Every string and repeated field of every Scheduler API, RoutingService and AgentService request has an entry
in ``FIELD_RULES`` (tests/scheduler/test_limits.py walks the protos to prove it); ``check_fields`` applies
them to a whole message. Semantic checks (DNS names, duplicates, min <= max, references) live beside each
kind of resource (model_specs, server_specs, pipelines/validation, experiments/validation, agent_service).

=========================  ==============  =====================================================================
Kind of text               Limit           Fields
=========================  ==============  =====================================================================
name                       63, DNS label   models, servers, pipelines, experiments, steps, candidates, mirrors
namespace                  63, DNS label   kubernetesMeta.namespace
identifier                 253             requirements, capabilities, parameter names, explainer type and refs,
                                           storage secret, topics, uids, MetaData.kind/version, agent_id
subscriber                 512             subscriberName, subscriberIp, gateway_name
uri                        4096            modelSpec.uri
reference                  512             pipeline inputs, triggers, output steps, external refs, tensor maps
endpoint                   256, ASCII      a replica's http_url and grpc_target
value (lines)              16384           parameter values, storageRcloneConfig (a secret value: never
                                           quoted in an error, see modelplane/storage_secrets.py)
reason (cleaned)           1024            reasons from agents and gateways: never refused (the state change
                                           they come with matters more); control characters become spaces
                                           and the rest is cut, saying how much was cut
=========================  ==============  =====================================================================

=========================================  ===============  ====================================================
Count or size                              Limit            Why
=========================================  ===============  ====================================================
serialized Model (one version's spec)      128 KiB          status of MAX_MODEL_VERSIONS versions fits 4 MB
model versions kept                        4                the same (inactive old versions go first)
model version number                       1..2**32-1       a uint32 on the wire; kubernetesMeta.generation
                                                            becomes the first version, so it must fit too
serialized Pipeline                        256 KiB          PipelineStatus(allVersions) fits 4 MB
pipeline versions kept                     4                the same (terminated old versions go first)
requirements / capabilities                64 / 256
parameters                                 256
triton cpu entries                         64
servers in one ServerNotify                1000
servers known                              10000
models known                               100000
pipelines known                            10000
experiments running                        10000
replicas (wanted, min, max, expected)      1000             replica indexes are 0..999
experiment candidates                      64
pipeline steps / references per list       256 / 64
tensor map entries                         256
models an agent reports at registration   100000
status message (any, built by scheduler)   4 MiB            gRPC's default client receive limit; every status
                                                            type is proved to fit by scheduler/test_limits.py
a log line                                 see modelplane/logs.py
=========================================  ===============  ====================================================

Caller text quoted in an error message goes through ``shown`` (cut to 64 characters, control characters
escaped), so no message, log line or trailer ever carries a caller's megabytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from modelplane import bounded_text
from modelplane.bounded_text import cut, cut_saying_how_much, one_line
from modelplane.sizes import MAX_MESSAGE_BYTES, MAX_SIZE
from modelplane.spec.errors import InvalidArgument, SchedulerError

# ----------------------------------------------------------------- counts, sizes and numbers

MAX_NAME_CHARS = 63
MAX_IDENTIFIER_CHARS = 253
MAX_SUBSCRIBER_CHARS = 512
MAX_URI_CHARS = 4096
MAX_REFERENCE_CHARS = 512
MAX_ENDPOINT_CHARS = 256
MAX_VALUE_CHARS = 16 * 1024
# The agent protocol's reason limit, owned by modelplane.bounded_text (the agent cuts to it as well).
MAX_REASON_CHARS = bounded_text.MAX_REASON_CHARS
# A replica's reason inside a model's status (ModelReplicaStatus.reason): up to MAX_SERVER_REPLICAS of them
# per version, so shorter; the model's own reasons (ModelStatus.reason, modelGwReason) are cut to
# MAX_STATUS_REASON_CHARS.
MAX_REPLICA_REASON_CHARS = 128
# Any reason in a status message is cut to this when rendered, whatever produced it.
MAX_STATUS_REASON_CHARS = 2 * MAX_REASON_CHARS
# Default client receive limit of gRPC (4 MiB); every status message the scheduler builds fits in it.
MAX_STATUS_BYTES = 4 * 1024 * 1024
# What a gateway accepts (every process's gRPC message limit): WatchRoutes messages fit in it.
MAX_ROUTE_BYTES = MAX_MESSAGE_BYTES

MAX_MODEL_SPEC_BYTES = 128 * 1024
MAX_MODEL_VERSIONS = 4
MAX_VERSION = 2**32 - 1
MAX_PIPELINE_SPEC_BYTES = 256 * 1024
MAX_PIPELINE_VERSIONS = 4
MAX_GENERATION = 2**63 - 1

MAX_REQUIREMENTS = 64
MAX_CAPABILITIES = 256
MAX_PARAMETERS = 256
MAX_TRITON_CPUS = 64
MAX_INSTANCES = 1024
# The largest size anywhere (modelplane/sizes.py): more than any machine's memory; it keeps sums in range.
MAX_MEMORY_BYTES = MAX_SIZE
MAX_REPLICAS = 1000
MAX_SERVER_REPLICAS = MAX_REPLICAS  # replica indexes are 0..MAX_SERVER_REPLICAS-1
MAX_OVERCOMMIT_PERCENT = 1000
MAX_SERVERS_PER_NOTIFY = 1000
MAX_SERVERS = 10_000
MAX_LOADED_MODELS = 100_000
MAX_MODELS = 100_000
MAX_PIPELINES = 10_000
MAX_EXPERIMENTS = 10_000  # running at once (a stopped one keeps its record, so its status still answers)
MAX_CANDIDATES = 64
MAX_STEPS = 256
MAX_REFERENCES = 64
MAX_TENSOR_MAP = 256
MAX_PIPELINE_UPDATES = 256
# Anything repeated that no rule names (there is none: a test checks) gets this.
DEFAULT_COUNT = 256

# How much of a caller's text an error message quotes.
SHOWN_CHARS = 64

# ----------------------------------------------------------------- text rules


@dataclass(frozen=True, slots=True)
class Text:
    """How long a string field may be, and whether it may span lines."""

    kind: str
    max_chars: int
    lines: bool = False
    # Free text our own components report (reasons): cleaned and cut where stored, never refused.
    cleaned: bool = False
    # Only ASCII (addresses: a URL's host is punycode, its path percent-encoded), so its bytes are its characters.
    ascii: bool = False
    # Credentials (an inline storage config): an error names the field and the problem, never quotes the text.
    secret: bool = False


NAME = Text("name", MAX_NAME_CHARS)
NAMESPACE = Text("namespace", MAX_NAME_CHARS)
IDENTIFIER = Text("identifier", MAX_IDENTIFIER_CHARS)
SUBSCRIBER = Text("subscriber", MAX_SUBSCRIBER_CHARS)
URI = Text("uri", MAX_URI_CHARS)
REFERENCE = Text("reference", MAX_REFERENCE_CHARS)
ENDPOINT = Text("endpoint", MAX_ENDPOINT_CHARS, ascii=True)
VALUE = Text("value", MAX_VALUE_CHARS, lines=True)
SECRET_VALUE = Text("secret value", MAX_VALUE_CHARS, lines=True, secret=True)
REASON = Text("reason", MAX_REASON_CHARS, cleaned=True)


@dataclass(frozen=True, slots=True)
class Rule:
    """The rule of one field: its text rule (strings, and string items or map keys/values) and its count
    (repeated and map fields)."""

    text: Text | None = None
    count: int | None = None


_S = "seldon.mlops.scheduler."
_C = "seldon.mlops.chainer."
_R = "mlops.routing.v1."
_A = "mlops.agent.v1."

FIELD_RULES: dict[str, Rule] = {
    # Scheduler API: models
    _S + "MetaData.name": Rule(NAME),
    _S + "MetaData.kind": Rule(IDENTIFIER),
    _S + "MetaData.version": Rule(IDENTIFIER),
    _S + "KubernetesMeta.namespace": Rule(NAMESPACE),
    _S + "ModelSpec.uri": Rule(URI),
    _S + "ModelSpec.requirements": Rule(IDENTIFIER, MAX_REQUIREMENTS),
    _S + "ModelSpec.server": Rule(NAME),
    _S + "ModelSpec.parameters": Rule(None, MAX_PARAMETERS),
    _S + "ParameterSpec.name": Rule(IDENTIFIER),
    _S + "ParameterSpec.value": Rule(VALUE),
    _S + "ExplainerSpec.type": Rule(IDENTIFIER),
    _S + "ExplainerSpec.modelRef": Rule(IDENTIFIER),
    _S + "ExplainerSpec.pipelineRef": Rule(IDENTIFIER),
    _S + "LlmSpec.modelRef": Rule(IDENTIFIER),
    _S + "LlmSpec.pipelineRef": Rule(IDENTIFIER),
    _S + "TritonModelConfig.cpu": Rule(None, MAX_TRITON_CPUS),
    _S + "StreamSpec.inputTopic": Rule(IDENTIFIER),
    _S + "StreamSpec.outputTopic": Rule(IDENTIFIER),
    _S + "StorageConfig.storageSecretName": Rule(IDENTIFIER),
    _S + "StorageConfig.storageRcloneConfig": Rule(SECRET_VALUE),
    _S + "ModelReference.name": Rule(NAME),
    # Scheduler API: servers, status requests, subscriptions
    _S + "ServerNotifyRequest.servers": Rule(None, MAX_SERVERS_PER_NOTIFY),
    _S + "ServerNotify.name": Rule(NAME),
    _S + "ServerStatusRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "ServerStatusRequest.name": Rule(NAME),
    _S + "ModelStatusRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "ModelSubscriptionRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "ServerSubscriptionRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "ExperimentSubscriptionRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "ExperimentStatusRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "ExperimentStatusRequest.name": Rule(NAME),
    _S + "PipelineStatusRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "PipelineStatusRequest.name": Rule(NAME),
    _S + "PipelineSubscriptionRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "PipelineSubscriptionRequest.subscriberIp": Rule(SUBSCRIBER),
    _S + "SchedulerStatusRequest.subscriberName": Rule(SUBSCRIBER),
    _S + "ControlPlaneSubscriptionRequest.subscriberName": Rule(SUBSCRIBER),
    # Scheduler API: gateways' acknowledgements
    _S + "ModelUpdateMessage.model": Rule(NAME),
    _S + "ModelUpdateMessage.uid": Rule(IDENTIFIER),
    _S + "ModelUpdateMessage.stream": Rule(IDENTIFIER),
    _S + "ModelUpdateStatusMessage.reason": Rule(REASON),
    _C + "PipelineUpdateStatusMessage.reason": Rule(REASON),
    _C + "PipelineUpdateMessage.pipeline": Rule(NAME),
    _C + "PipelineUpdateMessage.uid": Rule(IDENTIFIER),
    _C + "PipelineUpdateMessage.updates": Rule(None, MAX_PIPELINE_UPDATES),
    _C + "PipelineUpdateMessage.pipelineOutputTopic": Rule(IDENTIFIER),
    _C + "PipelineUpdateMessage.pipelineErrorTopic": Rule(IDENTIFIER),
    _C + "PipelineUpdateMessage.stream": Rule(IDENTIFIER),
    _C + "PipelineStepUpdate.sources": Rule(None, MAX_REFERENCES),
    _C + "PipelineStepUpdate.triggers": Rule(None, MAX_REFERENCES),
    _C + "PipelineStepUpdate.tensorMap": Rule(REFERENCE, MAX_TENSOR_MAP),
    _C + "PipelineTensorReference.pipelineName": Rule(NAME),
    _C + "PipelineTensorReference.stepName": Rule(NAME),
    _C + "PipelineTensorReference.tensor": Rule(REFERENCE),
    _C + "PipelineStepTarget.pipelineName": Rule(NAME),
    _C + "PipelineStepTarget.stepName": Rule(NAME),
    _C + "PipelineStepTarget.modelName": Rule(NAME),
    # Scheduler API: experiments
    _S + "Experiment.name": Rule(NAME),
    _S + "Experiment.default": Rule(NAME),
    _S + "Experiment.candidates": Rule(None, MAX_CANDIDATES),
    _S + "ExperimentCandidate.name": Rule(NAME),
    _S + "ExperimentMirror.name": Rule(NAME),
    _S + "StopExperimentRequest.name": Rule(NAME),
    # Scheduler API: pipelines
    _S + "Pipeline.name": Rule(NAME),
    _S + "Pipeline.uid": Rule(IDENTIFIER),
    _S + "Pipeline.steps": Rule(None, MAX_STEPS),
    _S + "PipelineStep.name": Rule(NAME),
    _S + "PipelineStep.inputs": Rule(REFERENCE, MAX_REFERENCES),
    _S + "PipelineStep.triggers": Rule(REFERENCE, MAX_REFERENCES),
    _S + "PipelineStep.tensorMap": Rule(REFERENCE, MAX_TENSOR_MAP),
    _S + "PipelineInput.externalInputs": Rule(REFERENCE, MAX_REFERENCES),
    _S + "PipelineInput.externalTriggers": Rule(REFERENCE, MAX_REFERENCES),
    _S + "PipelineInput.tensorMap": Rule(REFERENCE, MAX_TENSOR_MAP),
    _S + "PipelineOutput.steps": Rule(REFERENCE, MAX_REFERENCES),
    _S + "PipelineOutput.tensorMap": Rule(REFERENCE, MAX_TENSOR_MAP),
    _S + "UnloadPipelineRequest.name": Rule(NAME),
    # RoutingService
    _R + "ModelEndpointsRequest.model_name": Rule(NAME),
    _R + "WatchRoutesRequest.gateway_name": Rule(SUBSCRIBER),
    _R + "ExperimentRoutedRequest.gateway_name": Rule(SUBSCRIBER),
    _R + "ExperimentRoutedRequest.experiment_name": Rule(NAME),
    _R + "ExperimentRoutedRequest.reason": Rule(REASON),
    # AgentService
    _A + "Register.agent_id": Rule(IDENTIFIER),
    _A + "Register.loaded_models": Rule(None, MAX_LOADED_MODELS),
    _A + "ReplicaConfig.server_name": Rule(NAME),
    _A + "ReplicaConfig.capabilities": Rule(IDENTIFIER, MAX_CAPABILITIES),
    _A + "InferenceEndpoints.http_url": Rule(ENDPOINT),
    _A + "InferenceEndpoints.grpc_target": Rule(ENDPOINT),
    _A + "LoadedModel.name": Rule(NAME),
    _A + "ModelEvent.model_name": Rule(NAME),
    _A + "ModelEvent.reason": Rule(REASON),
    _A + "ServerHealth.reason": Rule(REASON),
    _A + "ServerHealth.loaded_models": Rule(None, MAX_LOADED_MODELS),
}

# ----------------------------------------------------------------- checks


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` as an error message may quote it: repr'd (control characters escaped), at most ``limit``
    characters of it, saying how long it really was when cut."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


# The characters no text may hold: Unicode categories Cc (controls), Zl and Zp (line and paragraph separators) and Cs
# (surrogates), in one expression, so a text is checked in one pass in C (a scheduler restoring 100,000 records checks
# millions of characters); the same with tab, newline and carriage return allowed, for texts that may hold lines.
_BAD_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_BAD_CHARACTERS_IN_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _bad_character(text: str, lines: bool) -> str | None:
    found = (_BAD_CHARACTERS_IN_LINES if lines else _BAD_CHARACTERS).search(text)
    return found.group() if found is not None else None


def check_text(text: str, where: str, rule: Text, error: type[SchedulerError] = InvalidArgument) -> None:
    """Raise ``error`` if ``text`` breaks ``rule`` (length or characters); the message says which and how."""
    if rule.cleaned:
        return  # cleaned where stored (clean_reason), never refused
    if len(text) > rule.max_chars:
        raise error(f"{where} is {len(text)} characters long; the limit is {rule.max_chars}")
    if rule.ascii and not text.isascii():
        quoted = "" if rule.secret else f" {shown(text)}"
        raise error(f"{where}{quoted} is not ASCII (a URL's host is punycode, its path percent-encoded)")
    bad = _bad_character(text, rule.lines)
    if bad is not None:
        quoted = "" if rule.secret else f" {shown(text)}"
        allowed = " (tab, newline and carriage return are allowed)" if rule.lines else ""
        where_bad = f" at character {text.index(bad)}" if rule.secret else ""
        raise error(f"{where}{quoted} contains the control character {bad!r}{where_bad}{allowed}")


def check_count(count: int, where: str, limit: int, error: type[SchedulerError] = InvalidArgument) -> None:
    if count > limit:
        raise error(f"{where} has {count} entries; the limit is {limit}")


_DEFAULT_RULE = Rule(IDENTIFIER, DEFAULT_COUNT)
# How check_fields walks a field: its kind and rule, looked up once per field of a message type, not per message.
_MAP, _REPEATED, _MESSAGE, _STRING, _OTHER = range(5)
_WALKS: dict[FieldDescriptor, tuple[int, Rule]] = {}


def _walk(field: FieldDescriptor) -> tuple[int, Rule]:
    walk = _WALKS.get(field)
    if walk is None:
        rule = FIELD_RULES.get(field.full_name, _DEFAULT_RULE)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            kind = _MAP
        elif field.is_repeated:
            kind = _REPEATED
        elif field.message_type is not None:
            kind = _MESSAGE
        elif field.type == FieldDescriptor.TYPE_STRING:
            kind = _STRING
        else:
            kind = _OTHER
        walk = _WALKS[field] = (kind, rule)
    return walk


def _text_ok(text: str, rule: Text) -> bool:
    """Whether ``check_text`` passes ``text``, without building what its error would say."""
    if rule.cleaned:
        return True
    return (
        len(text) <= rule.max_chars
        and (not rule.ascii or text.isascii())
        and (_BAD_CHARACTERS_IN_LINES if rule.lines else _BAD_CHARACTERS).search(text) is None
    )


def _item_ok(item: object, text: Text) -> bool:
    """An item of a repeated field, or a map's value: a message is walked, a string checked, else it passes."""
    if isinstance(item, Message):
        return _fields_ok(item)
    return not isinstance(item, str) or _text_ok(item, text)


def _fields_ok(message: Message) -> bool:
    """Whether ``check_fields`` passes ``message``: the same walk and rules, without the field paths an error
    would name (building them for every field was most of the check's cost, on every request)."""
    for field, value in message.ListFields():
        kind, rule = _walk(field)
        if kind == _OTHER:
            continue
        text = rule.text or IDENTIFIER
        if kind == _MAP:
            ok = len(value) <= (rule.count or DEFAULT_COUNT) and all(
                (not isinstance(key, str) or _text_ok(key, text)) and _item_ok(item, text)
                for key, item in value.items()
            )
        elif kind == _REPEATED:
            ok = len(value) <= (rule.count or DEFAULT_COUNT) and all(_item_ok(item, text) for item in value)
        elif kind == _MESSAGE:
            ok = _fields_ok(value)
        else:
            ok = _text_ok(value, text)
        if not ok:
            return False
    return True


def check_fields(message: Message, where: str, error: type[SchedulerError] = InvalidArgument) -> None:
    """Check every set string, repeated and map field of ``message`` (recursively) against ``FIELD_RULES``.

    ``where`` names the message in error messages (e.g. "model"); a field is named by its path from there.
    """
    if _fields_ok(message):
        return  # the usual case; otherwise the walk below finds the first problem and says where it is
    _check_fields_saying_where(message, where, error)


def _check_fields_saying_where(message: Message, where: str, error: type[SchedulerError]) -> None:
    for field, value in message.ListFields():
        kind, rule = _walk(field)
        if kind == _OTHER:
            continue
        path = f"{where}.{field.name}"
        if kind == _MAP:
            _check_map(value, path, rule, error)
        elif kind == _REPEATED:
            check_count(len(value), path, rule.count or DEFAULT_COUNT, error)
            for index, item in enumerate(value):
                if isinstance(item, Message):
                    _check_fields_saying_where(item, f"{path}[{index}]", error)
                elif isinstance(item, str):
                    check_text(item, f"{path}[{index}]", rule.text or IDENTIFIER, error)
        elif kind == _MESSAGE:
            _check_fields_saying_where(value, path, error)
        else:
            check_text(value, path, rule.text or IDENTIFIER, error)


def _check_map(value: Any, path: str, rule: Rule, error: type[SchedulerError]) -> None:
    check_count(len(value), path, rule.count or DEFAULT_COUNT, error)
    for key, item in value.items():
        if isinstance(key, str):
            check_text(key, f"{path} key", rule.text or IDENTIFIER, error)
        if isinstance(item, str):
            check_text(item, f"{path}[{shown(str(key), 20)}]", rule.text or IDENTIFIER, error)
        elif isinstance(item, Message):
            _check_fields_saying_where(item, f"{path}[{shown(str(key), 20)}]", error)


def clean_reason(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Free text a component reported (a reason): one line (modelplane.bounded_text.one_line), cut to ``limit``
    characters saying how much more there was. Never refused: the state change it comes with matters more."""
    return cut_saying_how_much(one_line(text), limit)


def bounded_join(
    items: Iterable[str], *, separator: str = "; ", shown_items: int = 5, noun: str = "more", more: int = 0
) -> str:
    """Join the first ``shown_items`` items, then say how many more there were ("and 9995 more servers"); ``more``
    counts items beyond those given (a caller that knows how many there are without producing them)."""
    listed: list[str] = []
    rest = more
    for item in items:
        if len(listed) < shown_items:
            listed.append(cut(item, MAX_REASON_CHARS // shown_items))
        else:
            rest += 1
    text = separator.join(listed)
    return f"{text}{separator}and {rest} {noun}" if rest else text
