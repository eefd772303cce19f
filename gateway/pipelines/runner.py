"""Runs pipelines by name for the router: one compiled executor per pipeline version, built on first use
(or when the routing stream announces the version, so a pipeline that cannot run here is reported)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.inference_types import InferenceError, JsonObject, ModelCaller
from gateway.pipelines.executor import PipelineExecutor, StepTimer
from gateway.routing_table import PipelineRoute, RoutingTable
from generated.mlops.routing.v1 import routing_pb2 as rpb


class PipelineRunner:
    def __init__(
        self,
        table: Callable[[], RoutingTable],
        call_model: ModelCaller,
        timeout_seconds: float,
        step_timer: StepTimer | None = None,
    ) -> None:
        self._table = table
        self._call_model = call_model
        self._timeout = timeout_seconds
        self._step_timer = step_timer
        self._executors: dict[str, tuple[str, PipelineExecutor]] = {}  # name -> (uid, executor)

    def executor(self, route: PipelineRoute) -> PipelineExecutor:
        cached = self._executors.get(route.name)
        if cached is not None and cached[0] == route.uid:
            return cached[1]
        executor = PipelineExecutor(route.spec, timeout_s=self._timeout)
        self._executors[route.name] = (route.uid, executor)
        return executor

    def check(self, route: rpb.PipelineRoute) -> str | None:
        """Why this gateway cannot execute the routed pipeline version, or None (for acknowledgements)."""
        try:
            self.executor(PipelineRoute(route.name, route.version, route.uid, route.pipeline))
        except InferenceError as error:
            return error.message
        return None

    async def run(self, name: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        route = self._table().pipelines.get(name)
        if route is None:
            raise InferenceError(404, f"pipeline {name!r} not found")
        return await self.executor(route).execute(request, self._call_model, headers, step_timer=self._step_timer)

    def forget_missing(self, table: RoutingTable) -> None:
        for name in [n for n in self._executors if n not in table.pipelines]:
            del self._executors[name]
