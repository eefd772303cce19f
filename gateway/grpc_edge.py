"""The V2 gRPC edge wired to the router: gRPC requests take the same routes as REST ones.

A name that is a pipeline (and not a model) runs the pipeline; everything else goes through model
routing, experiments included. Non-200 answers from a replica become InferenceErrors, which the
servicer maps to gRPC codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from gateway.inference_router import InferenceRouter, RoutedAnswer
from gateway.inference_types import InferenceError, JsonObject
from gateway.v2_grpc_service import InferResult, V2InferenceService


def _version(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 9:
        raise InferenceError(400, f"model version {text!r} is not a number")
    return int(text)


def _checked(answer: RoutedAnswer) -> JsonObject:
    if answer.status != 200:
        try:
            message = str(json.loads(answer.body).get("error", ""))
        except (ValueError, AttributeError):
            message = answer.body.decode("utf-8", errors="replace")[:500]
        raise InferenceError(answer.status, message or f"HTTP {answer.status}")
    return answer.json()


def v2_grpc_service(router: InferenceRouter, synced: Callable[[], bool]) -> V2InferenceService:
    async def infer(name: str, version: str | None, body: JsonObject, headers: Mapping[str, str]) -> InferResult:
        tables = router.table()
        data = json.dumps(body).encode()
        if version is None and name in tables.pipelines and name not in tables.models:
            answer = await router.infer_pipeline(name, data, headers)
        else:
            answer = await router.infer_model(name, _version(version), data, headers)
        return InferResult(_checked(answer), answer.headers)

    async def model_ready(name: str, version: str | None) -> bool:
        tables = router.table()
        if version is None and name in tables.pipelines and name not in tables.models:
            return router.pipeline_ready(name)
        return router.model_ready(name, _version(version))

    async def model_metadata(name: str, version: str | None) -> JsonObject:
        return _checked(await router.model_metadata(name, _version(version), {}))

    async def server_ready() -> bool:
        return synced()

    return V2InferenceService(
        infer=infer, model_ready=model_ready, model_metadata=model_metadata, server_ready=server_ready
    )
