"""The V2 gRPC edge wired to the router: gRPC requests take the same routes as REST ones.

A name that is a pipeline or an experiment over pipelines (and not a model) runs the pipeline;
everything else goes through model routing, experiments included. A replica's error answers arrive
as InferenceErrors (gateway.replica_client), which the servicer maps to gRPC codes. Requests arrive
decoded, so they are checked as REST bodies are but never parsed back from JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.edges.v2_grpc_service import InferResult, V2InferenceService
from gateway.inference_router import InferenceRouter, encode_request, parse_version
from gateway.inference_types import InferenceError, JsonObject
from gateway.request_ids import take_request_id
from gateway.seldon_targets import TargetKind, target_of
from gateway.server_identity import EXTENSIONS, SERVER_NAME, server_version
from modelplane import logs


def v2_grpc_service(router: InferenceRouter, synced: Callable[[], bool]) -> V2InferenceService:
    async def infer(name: str, version: str | None, body: JsonObject, headers: Mapping[str, str]) -> InferResult:
        number = parse_version(version)
        carried = dict(headers)
        request_id = take_request_id(carried)
        target = target_of(name, headers)  # Seldon's seldon-model metadata and name suffixes
        if target.kind is not TargetKind.MODEL:
            if number is not None:
                raise InferenceError(400, f"a {target.kind.value} has no versions: leave model_version empty")
            experiment = router.table().experiments.get(target.name)
            if target.kind is TargetKind.EXPERIMENT and experiment is None:
                raise router.unknown(f"experiment {target.name!r}")
            if target.kind is TargetKind.PIPELINE or router.is_pipeline(target.name, None):
                with logs.bound(request_id=request_id, pipeline=target.name):
                    response, route_headers = await router.route_pipeline(target.name, body, carried)
                return InferResult(response, route_headers)
        name = target.name
        if router.is_pipeline(name, number):
            with logs.bound(request_id=request_id, pipeline=name):
                response, route_headers = await router.route_pipeline(name, body, carried)
            return InferResult(response, route_headers)
        with logs.bound(request_id=request_id, model=name):
            answer = await router.infer_model(name, number, encode_request(body), carried, checked=True)
        return InferResult(answer.json(), answer.headers)

    async def model_ready(name: str, version: str | None) -> bool:
        """Unknown names are not ready: gRPC's ModelReady answers a boolean (REST's 404 is its "false")."""
        number = parse_version(version)
        target = target_of(name, {})
        try:
            if target.kind is not TargetKind.MODEL:
                return router.target_ready(target, number)
            if router.is_pipeline(name, number):
                return router.pipeline_ready(name)
            return router.model_ready(name, number)
        except InferenceError as error:
            if error.status == 404:
                return False
            raise

    async def model_metadata(name: str, version: str | None) -> JsonObject:
        return (await router.model_metadata(name, parse_version(version), {})).json()

    async def server_ready() -> bool:
        return synced()

    return V2InferenceService(
        infer=infer,
        model_ready=model_ready,
        model_metadata=model_metadata,
        server_ready=server_ready,
        server_name=SERVER_NAME,
        server_version=server_version(),
        extensions=EXTENSIONS,
    )
