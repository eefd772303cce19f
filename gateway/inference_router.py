"""Where each inference request goes: transport-agnostic routing of models, experiments and pipelines.

REST, gRPC and Kafka adapters all call this one object. A request names a model, a pipeline, or an
experiment (by its own name or by its default's name, see RoutingTable.experiment_for); an experiment
picks a candidate (and maybe a mirror) and the request continues to that model or pipeline. A pinned
version (``/versions/{v}``) addresses exactly that model version and bypasses experiments.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.edges.v2_grpc_codec import check_infer_request
from gateway.experiment_split import ExperimentSplitter
from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_types import MAX_REQUEST_ID_CHARS, InferenceError, JsonObject
from gateway.json_documents import JsonDocumentError, dumps, loads_bounded
from gateway.replica_client import ReplicaAnswer, ReplicaClient
from gateway.routing_table import ROUTE_HEADER, RoutingTable
from gateway.seldon_targets import Target, TargetKind
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane import logs
from modelplane.inference_limits import MAX_REQUEST_BODY_BYTES
from modelplane.whole_numbers import parse_whole_number

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class RoutedAnswer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> JsonObject:
        try:
            document: Any = loads_bounded(self.body)
        except JsonDocumentError as error:
            raise InferenceError(502, f"the answer is not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise InferenceError(502, "the answer is not a JSON object")
        return document


def parse_request(body: bytes) -> JsonObject:
    """A V2 inference request body from a caller: JSON within the nesting limit, an object with an ``inputs``
    list, and every tensor well formed (gateway.edges.v2_grpc_codec.check_infer_request), so that a request no
    server could take is the caller's 400 here, not whatever each server makes of it."""
    _check_size(body)
    try:
        document: Any = loads_bounded(body)
    except JsonDocumentError as error:
        raise InferenceError(400, f"request body is not valid JSON: {error}") from None
    request = check_routable(document)
    check_infer_request(request)
    return request


def encode_request(request: JsonObject) -> bytes:
    """The body of an already-decoded request (gRPC, Kafka), held to the same checks as :func:`parse_request`
    without parsing it back."""
    body = dumps(request)
    _check_size(body)
    check_routable(request)
    return body


def _check_size(body: bytes) -> None:
    if len(body) > MAX_REQUEST_BODY_BYTES:
        raise InferenceError(413, f"request body larger than {MAX_REQUEST_BODY_BYTES} bytes")


def check_routable(document: object) -> JsonObject:
    """A decoded V2 inference request, checked enough to route it: an object with a non-empty ``inputs`` list,
    and an ``id`` (if any) that servers can carry: MLServer echoes it in an HTTP header, and fails with a
    500 on one that is not Latin-1, so it must be printable ASCII, at most MAX_REQUEST_ID_CHARS long."""
    if not isinstance(document, dict):
        raise InferenceError(400, "request body must be a JSON object (a V2 inference request)")
    request_id = document.get("id")
    if request_id is not None and not (
        isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_CHARS and _REQUEST_ID.fullmatch(request_id)
    ):
        raise InferenceError(
            400, f"the request id must be a string of at most {MAX_REQUEST_ID_CHARS} printable ASCII characters"
        )
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferenceError(400, "a V2 inference request needs a non-empty 'inputs' list")
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InferenceError(400, f"inputs[{index}] must be an object with a string 'name'")
    return document


def parse_version(text: str | None) -> int | None:
    """A model version from a URL path or a gRPC request (None or empty: the newest)."""
    if not text:
        return None
    number = parse_whole_number(text, max_digits=9)
    if number is None:
        raise InferenceError(400, f"model version {text!r} is not a number")
    return number


class PipelineRunning(Protocol):
    """What the router needs from gateway/pipelines/runner.py."""

    async def run(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject: ...


class InferenceRouter:
    def __init__(
        self,
        table: Callable[[], RoutingTable],
        client: ReplicaClient,
        metrics: GatewayMetrics,
        splitter: ExperimentSplitter | None = None,
        stale_reason: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._table = table
        # Why the table may be out of date now (no table yet, the scheduler unreachable), or None.
        self._stale_reason = stale_reason
        self.client = client
        self.metrics = metrics
        self.splitter = splitter or ExperimentSplitter()
        self.pipelines: PipelineRunning | None = None
        self._background: set[asyncio.Task[None]] = set()

    def table(self) -> RoutingTable:
        return self._table()

    def unknown(self, what: str) -> InferenceError:
        """The error for a name the table does not hold: 404, or 503 while the table may be out of date (the
        name may well exist: the scheduler cannot tell this gateway now)."""
        reason = self._stale_reason()
        if reason is None:
            return InferenceError(404, f"{what} not found")
        return InferenceError(
            503, f"{what} is not known to this gateway, whose routing table may be out of date: {reason}"
        )

    # ----------------------------------------------------------------- Seldon's names

    async def infer_target(
        self, target: Target, version: int | None, body: bytes, headers: Mapping[str, str]
    ) -> RoutedAnswer:
        """A REST infer by what the request names (gateway.seldon_targets): a model (the plain path), a pipeline
        or an experiment."""
        if target.kind is TargetKind.MODEL:
            return await self.infer_model(target.name, version, body, headers)
        if version is not None:
            raise InferenceError(400, f"a {target.kind.value} has no versions: leave /versions/{version} out")
        if target.kind is TargetKind.PIPELINE:
            return await self.infer_pipeline(target.name, body, headers)
        experiment = self._table().experiments.get(target.name)
        if experiment is None:
            raise self.unknown(f"experiment {target.name!r}")
        if experiment.resourceType == pb.PIPELINE:
            return await self.infer_pipeline(target.name, body, headers)
        return await self.infer_model(target.name, None, body, headers)

    def target_ready(self, target: Target, version: int | None) -> bool:
        if target.kind is TargetKind.MODEL:
            return self.model_ready(target.name, version)
        if target.kind is TargetKind.PIPELINE:
            return self.pipeline_ready(target.name)
        experiment = self._table().experiments.get(target.name)
        if experiment is None:
            raise self.unknown(f"experiment {target.name!r}")
        return _any_candidate_serves(self._table(), experiment)

    # ----------------------------------------------------------------- models

    async def infer_model(
        self, name: str, version: int | None, body: bytes, headers: Mapping[str, str], *, checked: bool = False
    ) -> RoutedAnswer:
        """A V2 infer for ``name`` (a model, or an experiment over models), body passed through as is.

        ``checked``: the body was built here from a request already checked (pipelines, Kafka), so it is
        not parsed again."""
        if not checked:
            parse_request(body)  # 400 here rather than whatever the server makes of it
        table = self._table()
        experiment = table.experiment_for(name, pb.MODEL) if version is None else None
        target, route_headers = name, dict[str, str]()
        bound = None
        started = time.perf_counter()
        if experiment is None and name not in table.models and name in table.pipelines:
            raise InferenceError(404, f"{name!r} is a pipeline: send it to /v2/pipelines/{name}/infer")
        try:
            if experiment is not None:
                target, route_headers = self._split(
                    experiment, headers, lambda mirror: self._forward(mirror, None, body, headers)
                )
                bound = logs.bind(experiment=experiment.name, model=target)
            answer = await self._forward(target, version, body, headers)
        except InferenceError as error:
            # Names of unknown models stay out of the metrics' labels; an experiment's are known.
            if experiment is not None or target in table.models:
                self.metrics.request("model", name, target, error.status, time.perf_counter() - started)
            raise
        finally:
            if bound is not None:
                logs.unbind(bound)
        self.metrics.request("model", name, target, answer.status, time.perf_counter() - started)
        return RoutedAnswer(answer.status, answer.body, answer.content_type, route_headers)

    async def call_model(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        """The ModelCaller of pipelines and Kafka: JSON in, JSON out, experiments applied, errors raised."""
        with logs.bound(model=name):
            answer = await self.infer_model(name, None, encode_request(request), headers, checked=True)
        return answer.json()

    async def _forward(self, model: str, version: int | None, body: bytes, headers: Mapping[str, str]) -> ReplicaAnswer:
        path = f"/v2/models/{model}/versions/{version}/infer" if version is not None else f"/v2/models/{model}/infer"
        return await self._send(model, version, method="POST", path=path, body=body, headers=headers)

    async def _send(
        self,
        model: str,
        version: int | None,
        *,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> ReplicaAnswer:
        table = self._table()
        route = table.models.get(model)
        if route is None:
            raise self.unknown(f"model {model!r}")
        which = f"model {model!r}" + (f" version {version}" if version is not None else "")
        if version is not None and version not in route.versions:
            known = ", ".join(str(v) for v in route.versions) or "none"
            raise InferenceError(404, f"{which} is not served (versions served: {known})")
        try:
            return await self.client.send(
                route.endpoints(version), method=method, path=path, body=body, headers=headers, what=which
            )
        except InferenceError as error:
            # The table may have changed while we tried (a model that moved): one more go with the new route.
            fresh = self._table().models.get(model)
            if error.status in (502, 503) and fresh is not None and fresh != route and fresh.endpoints(version):
                self.metrics.retry(model)
                return await self.client.send(
                    fresh.endpoints(version), method=method, path=path, body=body, headers=headers, what=which
                )
            raise

    async def model_metadata(self, name: str, version: int | None, headers: Mapping[str, str]) -> RoutedAnswer:
        """The serving replica's metadata of ``name``, told in the public terms: the model's name (never the
        server's versioned ``iris_1``) and the versions this gateway routes to."""
        return await self._described(name, version, "", headers)

    async def model_config(self, name: str, version: int | None, headers: Mapping[str, str]) -> RoutedAnswer:
        """The serving replica's model configuration (Triton's ``/config``), with the public name."""
        return await self._described(name, version, "/config", headers)

    async def _described(self, name: str, version: int | None, suffix: str, headers: Mapping[str, str]) -> RoutedAnswer:
        base = f"/v2/models/{name}/versions/{version}" if version is not None else f"/v2/models/{name}"
        answer = await self._send(name, version, method="GET", path=base + suffix, body=None, headers=headers)
        document = RoutedAnswer(answer.status, answer.body, answer.content_type).json()
        document["name"] = name
        route = self._table().models.get(name)
        if not suffix and route is not None:
            document["versions"] = [str(number) for number in route.versions]
        return RoutedAnswer(answer.status, dumps(document))

    def model_ready(self, name: str, version: int | None) -> bool:
        """Ready when some replica serves it (an experiment: when a candidate can answer, as requests go
        only to those)."""
        table = self._table()
        experiment = table.experiment_for(name, pb.MODEL, via_default=False) if version is None else None
        if experiment is not None:
            return _any_candidate_serves(table, experiment)
        route = table.models.get(name)
        if route is None:
            raise self.unknown(f"model {name!r}")
        return bool(route.endpoints(version))

    # ----------------------------------------------------------------- pipelines

    async def infer_pipeline(self, name: str, body: bytes, headers: Mapping[str, str]) -> RoutedAnswer:
        response, route_headers = await self.route_pipeline(name, parse_request(body), headers)
        return RoutedAnswer(200, dumps(response), "application/json", route_headers)

    async def call_pipeline(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        """The pipeline caller of the Kafka bridge (experiments applied)."""
        encode_request(request)  # the REST body's checks, size included
        return (await self.route_pipeline(name, request, headers))[0]

    async def route_pipeline(
        self, name: str, request: JsonObject, headers: Mapping[str, str]
    ) -> tuple[JsonObject, dict[str, str]]:
        """Run ``request`` (already checked) through pipeline ``name`` or its experiment: the V2 response,
        and the response headers that name the candidate taken (sticky sessions)."""
        experiment = self._table().experiment_for(name, pb.PIPELINE)
        target, route_headers = name, dict[str, str]()
        started = time.perf_counter()
        try:
            if experiment is not None:
                target, route_headers = self._split(
                    experiment, headers, lambda mirror: self.run_pipeline(mirror, request, headers)
                )
                with logs.bound(experiment=experiment.name, pipeline=target):
                    response = await self.run_pipeline(target, request, headers)
            else:
                response = await self.run_pipeline(target, request, headers)
        except InferenceError as error:
            # Failures are answers too (the same as a model's); names of unknown pipelines stay out of the labels.
            if experiment is not None or target in self._table().pipelines:
                self.metrics.request("pipeline", name, target, error.status, time.perf_counter() - started)
            raise
        self.metrics.request("pipeline", name, target, 200, time.perf_counter() - started)
        return response, route_headers

    async def run_pipeline(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        if name not in self._table().pipelines:
            raise self.unknown(f"pipeline {name!r}")
        if self.pipelines is None:
            raise InferenceError(501, "this gateway executes no pipelines")
        return await self.pipelines.run(name, request, headers)

    def pipeline_ready(self, name: str) -> bool:
        """Ready when every step's model is (an experiment over pipelines: when a candidate is)."""
        table = self._table()
        experiment = table.experiment_for(name, pb.PIPELINE, via_default=False)
        if experiment is not None and name not in table.pipelines:
            return _any_candidate_serves(table, experiment)
        if name not in table.pipelines:
            raise self.unknown(f"pipeline {name!r}")
        return table.pipeline_models_ready(name)

    def is_pipeline(self, name: str, version: int | None) -> bool:
        """Whether a request for ``name`` by the model protocol (gRPC has no pipeline path) means a pipeline:
        a pipeline's name, or an experiment over pipelines called by its own name."""
        table = self._table()
        if version is not None or name in table.models:
            return False
        return name in table.pipelines or table.experiment_for(name, pb.PIPELINE, via_default=False) is not None

    # ----------------------------------------------------------------- experiments and mirrors

    def _split(
        self, experiment: pb.Experiment, headers: Mapping[str, str], send_copy: Callable[[str], Awaitable[object]]
    ) -> tuple[str, dict[str, str]]:
        """The candidate this request goes to, and the response headers that say so (sticky sessions);
        starts the mirror's copy when the draw says so. Only candidates (and a mirror) with a serving route
        are drawn: one that was unloaded or lost its replicas gets no traffic until it is back, and with
        none left the answer is 503 (the experiment exists; nothing can answer for it now)."""
        table = self._table()
        decision = self.splitter.decide(experiment, headers, lambda n: table.serves(n, experiment.resourceType))
        if decision.candidate is None:
            names = [c.name for c in experiment.candidates] or [experiment.default]
            raise InferenceError(
                503, f"experiment {experiment.name!r}: none of its candidates ({', '.join(names)}) can answer now"
            )
        self.metrics.experiment_route(experiment.name, decision.candidate)
        if decision.mirror:
            mirror = decision.mirror
            self._mirror(experiment.name, mirror, lambda: send_copy(mirror))
        return decision.candidate, {ROUTE_HEADER: decision.candidate} if decision.sticky else {}

    def _mirror(self, experiment: str, target: str, send: Callable[[], Any]) -> None:
        """Send a copy in the background; its answer (or failure) is counted and dropped."""

        async def copy() -> None:
            try:
                result = await send()
                failed = isinstance(result, ReplicaAnswer) and result.status != 200
                outcome = "error" if failed else "ok"
            except InferenceError as error:
                log.debug("mirror %s of experiment %s failed: %s", target, experiment, error.message)
                outcome = "error"
            self.metrics.mirror(experiment, target, outcome)

        task = asyncio.create_task(copy())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def _any_candidate_serves(table: RoutingTable, experiment: pb.Experiment) -> bool:
    names = [c.name for c in experiment.candidates] or [experiment.default]
    return any(table.serves(name, experiment.resourceType) for name in names)
