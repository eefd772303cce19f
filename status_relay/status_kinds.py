"""The four kinds of status the relay follows: which RPCs carry them, what a status is keyed by, and which status is
the last word on something the scheduler has forgotten.

Keys are the scheduler's own (scheduler/publishing.py): a model, pipeline or experiment by its name; a server by its
name and the response type, as its status updates and scaling requests coalesce apart. A relay subscriber gets, per
key, the latest status the scheduler sent, exactly as the scheduler serialised it.

Domain code: no grpc here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from generated.mlops.scheduler import scheduler_pb2 as pb

__all__ = ["KINDS", "StatusKind", "kind_for_rpc"]


@dataclass(frozen=True, slots=True)
class StatusKind:
    """One status stream of the Scheduler API, as the relay follows and serves it."""

    name: str  # for logs, metrics and messages: "model", "server", ...
    subscribe_rpc: str  # the streaming RPC the relay subscribes to and serves (e.g. SubscribeModelStatus)
    subscribe_request: type[Message]
    list_rpc: str  # the one-shot listing of the same statuses (e.g. ModelStatus), read once per connection
    list_request: type[Message]
    response: type[Message]
    key: Callable[[Any], Hashable]  # a status -> its coalescing key
    # A status after which the scheduler holds nothing of its key (its subscription snapshot would not have it):
    # the relay forgets the key too, so a new subscriber's snapshot is what the scheduler's would be.
    final: Callable[[Any], bool]
    sorted_snapshot: bool  # the scheduler's snapshot of this kind is in key order (else in the order keys came)
    # Whether a key is part of the state a new subscriber's snapshot holds. A server's scaling requests are not:
    # the scheduler sends them as they happen only, so the relay passes them on and keeps none.
    in_snapshot: Callable[[Hashable], bool] = lambda _key: True
    # Whether the scheduler forgets keys of this kind without a final status (servers; stopped experiments after
    # their TTL): only those kinds are listed again now and then (status_cache.py, forgotten keys). Models and
    # pipelines end with a final status, and listing 100,000 models every few minutes would cost the scheduler.
    forgets_silently: bool = False

    def parse(self, data: bytes) -> Message:
        return self.response.FromString(data)


def _model_final(status: pb.ModelStatusResponse) -> bool:
    # The scheduler forgets a deleted model once every version has terminated and says so last: a ModelTerminated
    # version, or none at all (scheduler/status_messages.py, removed_model_status).
    return status.deleted and all(v.state.state == pb.ModelStatus.ModelTerminated for v in status.versions)


def _pipeline_final(status: pb.PipelineStatusResponse) -> bool:
    # A deleted pipeline is removed once all its versions are Terminated, and that status is its last.
    terminated = pb.PipelineVersionState.PipelineTerminated
    return bool(status.versions) and all(v.state.status == terminated for v in status.versions)


def _never(_status: Any) -> bool:
    # Servers and stopped experiments are forgotten without a status of their own (README, "Status relays").
    return False


KINDS: tuple[StatusKind, ...] = (
    StatusKind(
        "model",
        "SubscribeModelStatus",
        pb.ModelSubscriptionRequest,
        "ModelStatus",
        pb.ModelStatusRequest,
        pb.ModelStatusResponse,
        key=lambda status: status.modelName,
        final=_model_final,
        sorted_snapshot=False,
    ),
    StatusKind(
        "server",
        "SubscribeServerStatus",
        pb.ServerSubscriptionRequest,
        "ServerStatus",
        pb.ServerStatusRequest,
        pb.ServerStatusResponse,
        key=lambda status: (status.serverName, status.type),
        final=_never,
        forgets_silently=True,
        sorted_snapshot=False,
        in_snapshot=lambda key: isinstance(key, tuple) and key[1] == pb.ServerStatusResponse.StatusUpdate,
    ),
    StatusKind(
        "pipeline",
        "SubscribePipelineStatus",
        pb.PipelineSubscriptionRequest,
        "PipelineStatus",
        pb.PipelineStatusRequest,
        pb.PipelineStatusResponse,
        key=lambda status: status.pipelineName,
        final=_pipeline_final,
        sorted_snapshot=True,
    ),
    StatusKind(
        "experiment",
        "SubscribeExperimentStatus",
        pb.ExperimentSubscriptionRequest,
        "ExperimentStatus",
        pb.ExperimentStatusRequest,
        pb.ExperimentStatusResponse,
        key=lambda status: status.experimentName,
        final=_never,
        forgets_silently=True,
        sorted_snapshot=True,
    ),
)


def kind_for_rpc(rpc: str) -> StatusKind:
    for kind in KINDS:
        if kind.subscribe_rpc == rpc:
            return kind
    raise KeyError(rpc)
