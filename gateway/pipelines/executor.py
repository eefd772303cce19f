"""Execute a pipeline for one V2 request: a dataflow graph of model calls, joined and gated as Seldon does.

Semantics (one request; "source" = the pipeline's inputs, a step's inputs, or a step's outputs):

* A source *emits* tensors: the pipeline's inputs at the start; ``step.inputs`` when the step starts (the
  tensors its model receives, after ``tensorMap``); ``step.outputs`` when its model answers.
* Each step (and the output) holds, per reference, the latest message of that reference's source. It
  *fires* when its joins are satisfied, and firing consumes what it held:

  - ``inputsJoin`` INNER: every input reference holds data. OUTER: all do, or ``joinWindowMs`` has passed
    since the first arrived, or the missing ones can no longer arrive; then it goes with what it holds
    (at least one). ANY: as soon as one holds data (references that arrived together all count).
  - ``triggers`` gate a step without feeding it. A trigger reference is *true* when its source emitted and,
    for ``src.outputs.t``, that message holds tensor ``t`` (for a whole side: holds any tensor) — Seldon's
    rule, so a conditional model signals by which tensor it returns and an empty ``[""]`` tensor still
    fires. With :attr:`TriggerRule.TRUTHY` a trigger must also hold an element that is true, non-zero, or a
    non-empty string. ``triggersJoin`` INNER needs every trigger true; OUTER waits like inputs and needs
    one true; ANY needs one true. A false or never-emitted trigger means the step does not run.
  - A step whose join can no longer be satisfied does not run, so steps that only depend on steps that did
    not run do not run either; OUTER/ANY joins go on with the sources that did arrive.

* Steps run as asyncio tasks, each started as soon as its joins are satisfied, so independent steps overlap.
  The response is the output's first firing; everything still running is then cancelled (only steps the
  output depends on run at all, see :mod:`gateway.pipelines.graph`).
* Cycles (``allowCycles``): a step fires again whenever its joins are satisfied again by new messages, so
  it runs at most ``1 + maxStepRevisits`` times per request; one firing too many fails the request with
  508 (Loop Detected). Without cycles each step runs at most once (a later ANY arrival is ignored).

Errors (InferenceError, with the status the REST adapter answers with):

* 400: a malformed request (names the tensor and the problem), or a reference to a pipeline input tensor
  the request does not hold.
* A step's call failing: "pipeline P step S (model M) failed: <reason>", keeping the step's own status
  when it is 4xx (the request was bad for that model), 503 or 504 (retry-able as the step said), else 502.
  A step's malformed response, or a reference to a tensor the step did not produce: 502.
* 500: the spec cannot be executed as written (two tensors of one name meet in a step: use ``tensorMap``).
* 422: nothing reached the output (every path was gated off); the message names the steps not triggered.
* 504: the request's overall deadline passed; 508: ``maxStepRevisits`` exceeded.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Callable, Mapping

from gateway.inference_types import InferenceError, JsonObject, ModelCaller
from gateway.pipelines.graph import (
    DEFAULT_JOIN_WINDOW_MS,
    OUTPUT_NAME,
    PIPELINE_INPUTS,
    Consumer,
    JoinType,
    PipelineGraph,
    Port,
    SourceKey,
    compile_pipeline,
)
from gateway.pipelines.joins import Held, Missing, could_fire, ready_to_fire
from gateway.pipelines.step_trace import StepTrace, wants_steps
from gateway.pipelines.tensors import (
    TensorError,
    TensorLimits,
    check_request,
    check_response,
    has_truthy_element,
    renamed,
)
from generated.mlops.scheduler import scheduler_pb2 as pb

# Told of each step's model call when it ends: (pipeline, step, answered well, seconds). The gateway's metrics.
StepTimer = Callable[[str, str, bool, float], None]

log = logging.getLogger(__name__)

NO_OUTPUT_STATUS = 422
LOOP_STATUS = 508
# Statuses of a failed step that mean the same for the whole pipeline; anything else becomes 502.
_KEPT_STEP_STATUSES = frozenset({503, 504})


# What ready_to_fire gets for the live steps in a graph without OUTER joins: it reads them only for those.
_NOT_ASKED: frozenset[str] = frozenset()


class TriggerRule(enum.Enum):
    """When a trigger reference counts as true."""

    PRESENT = "present"  # the referenced tensor (or any tensor of the side) was emitted: Seldon's rule
    TRUTHY = "truthy"  # ... and holds an element that is true, non-zero or a non-empty string


class _StepError(Exception):
    def __init__(self, step: str, status: int, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.status = status
        self.message = message


def _pipeline_status(step_status: int) -> int:
    if 400 <= step_status < 500 or step_status in _KEPT_STEP_STATUSES:
        return step_status
    return 502


class PipelineExecutor:
    """One pipeline version, compiled once; :meth:`execute` runs it for one request at a time, concurrently."""

    def __init__(
        self,
        pipeline: pb.Pipeline,
        *,
        default_join_window_ms: int = DEFAULT_JOIN_WINDOW_MS,
        trigger_rule: TriggerRule = TriggerRule.PRESENT,
        limits: TensorLimits | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Compile ``pipeline`` (raises InferenceError 500/501, see :func:`compile_pipeline`).

        ``timeout_s``: the default overall deadline of one request (None: no deadline of its own).
        """
        self.graph = compile_pipeline(pipeline, default_join_window_ms=default_join_window_ms)
        self.trigger_rule = trigger_rule
        self.limits = limits or TensorLimits()
        self.timeout_s = timeout_s
        # The steps in spec order, then the output: the order every pass over the graph takes.
        self.consumers: tuple[Consumer, ...] = (*self.graph.steps.values(), self.graph.output)
        # Which steps may still emit matters only to an OUTER join (it waits for those, or for its window);
        # a graph without one never asks, so a request through it does not compute it at every pass.
        self.has_outer_join = any(JoinType.OUTER in (c.inputs_join, c.triggers_join) for c in self.consumers)

    @property
    def name(self) -> str:
        return self.graph.name

    async def execute(
        self,
        request: JsonObject,
        call_model: ModelCaller,
        headers: Mapping[str, str],
        *,
        timeout_s: float | None = None,
        step_timer: StepTimer | None = None,
    ) -> JsonObject:
        """Run the pipeline on V2 ``request``; return the V2 response ``{"model_name", "id", "outputs"}``.

        ``headers`` go with every model call. ``timeout_s`` overrides the executor's default deadline.
        Cancelling the caller cancels every step still running.
        """
        try:
            inputs = check_request(request, self.limits)
        except TensorError as error:
            raise InferenceError(400, f"pipeline {self.name!r}: malformed request: {error}") from None
        run = _Run(self, request, call_model, headers, step_timer)
        return await run.execute(inputs, self.timeout_s if timeout_s is None else timeout_s)


class _Run:
    """The state of one request going through the graph."""

    def __init__(
        self,
        executor: PipelineExecutor,
        request: JsonObject,
        call_model: ModelCaller,
        headers: Mapping[str, str],
        step_timer: StepTimer | None = None,
    ) -> None:
        self.step_timer = step_timer
        self.graph: PipelineGraph = executor.graph
        self.consumers = executor.consumers
        self.has_outer_join = executor.has_outer_join
        self.rule = executor.trigger_rule
        self.limits = executor.limits
        self.call_model = call_model
        self.headers = headers
        self.request_id: str = request.get("id") or uuid.uuid4().hex
        self.parameters: object = request.get("parameters")
        self.held: dict[str, Held] = {name: Held() for name in [*self.graph.steps, OUTPUT_NAME]}
        self.fired: dict[str, int] = dict.fromkeys(self.graph.steps, 0)
        self.untriggered: set[str] = set()  # steps that saw a false trigger
        self.running: dict[asyncio.Task[list[JsonObject]], str] = {}
        # Only when the caller asked for each step's tensors (gateway/pipelines/step_trace.py): None costs nothing.
        self.trace: StepTrace | None = StepTrace() if wants_steps(headers) else None
        self.traced: dict[asyncio.Task[list[JsonObject]], JsonObject] = {}
        # Steps that finished since the loop last looked, and the future the loop sleeps on: one done callback
        # per step and one future per wait, where asyncio.wait would add and remove a callback on every
        # running step and start a timer each time it is called.
        self.finished: list[asyncio.Task[list[JsonObject]]] = []
        self.wakeup: asyncio.Future[None] | None = None
        self.out_of_time = False  # the deadline's alarm rang (timers may ring a clock tick early)
        self.response: JsonObject | None = None
        self.loop = asyncio.get_running_loop()
        # Without cycles a step runs once; with them, 1 + maxStepRevisits times.
        self.max_runs = 1 + self.graph.max_step_revisits if self.graph.allow_cycles else 1

    # ------------------------------------------------------------------ the loop

    async def execute(self, inputs: list[JsonObject], timeout_s: float | None) -> JsonObject:
        deadline = None if timeout_s is None else self.loop.time() + timeout_s
        # One timer for the whole request: it wakes the loop at the deadline, whatever it is waiting for.
        alarm = None if deadline is None else self.loop.call_at(deadline, self._ring)
        try:
            self._emit(PIPELINE_INPUTS, inputs)
            while True:
                self._advance()
                if self.response is not None:
                    if self.trace is not None:
                        self.response["steps"] = self.trace.document()
                    return self.response
                waits = self._window_ends()
                if not self.running and not self.finished and not waits:
                    raise self._no_output()
                if self.out_of_time or (deadline is not None and self.loop.time() >= deadline):
                    raise self._timed_out(timeout_s)
                await self._wait_for_step(min(waits, default=None))
                done, self.finished = self.finished, []
                self._collect(done)
        finally:
            if alarm is not None:
                alarm.cancel()
            await self._cancel_running()

    async def _wait_for_step(self, until: float | None) -> None:
        """Until a step finishes, the deadline's alarm rings, or (when given) the loop's clock reaches ``until``."""
        if self.finished:
            return
        self.wakeup = self.loop.create_future()
        timer = None if until is None else self.loop.call_at(until, self._wake)
        try:
            await self.wakeup
        finally:
            self.wakeup = None
            if timer is not None:
                timer.cancel()

    def _ring(self) -> None:
        self.out_of_time = True
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def _step_done(self, task: asyncio.Task[list[JsonObject]]) -> None:
        if task in self.running:  # not one cancelled when the request ended
            self.finished.append(task)
            self._wake()

    def _collect(self, done: list[asyncio.Task[list[JsonObject]]]) -> None:
        """Emit the outputs of finished steps; the first failure (in spec order) fails the request."""
        order = list(self.graph.steps)
        failures: list[_StepError] = []
        finished: list[tuple[str, list[JsonObject]]] = []
        for task in done:
            step = self.running.pop(task)
            error = task.exception()
            if error is None:
                finished.append((step, task.result()))
                if self.trace is not None:
                    self.trace.answered(self.traced.pop(task), task.result())
            elif isinstance(error, _StepError):
                failures.append(error)
            else:  # a bug here, not in the model: still name the step
                failures.append(_StepError(step, 500, f"{type(error).__name__}: {error}"))
        if failures:
            first = min(failures, key=lambda failure: order.index(failure.step))
            failed = self.graph.steps[first.step]
            raise InferenceError(
                first.status,
                f"pipeline {self.graph.name!r} step {failed.name!r} (model {failed.model!r}) failed: {first}",
            )
        for step, outputs in sorted(finished, key=lambda item: order.index(item[0])):
            self._emit((step, "outputs"), outputs)

    async def _cancel_running(self) -> None:
        tasks = list(self.running)
        self.running.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ messages arriving

    def _emit(self, source: SourceKey, tensors: list[JsonObject]) -> None:
        now = self.loop.time()
        for name, kind, index in self.graph.readers.get(source, ()):
            consumer = self.graph.consumer(name)
            held = self.held[name]
            if kind == "inputs":
                held.data[index] = self._select(consumer.inputs[index], tensors)
            else:
                fired = self._trigger(consumer.triggers[index], tensors)
                held.triggers[index] = fired
                if not fired:
                    self.untriggered.add(name)
            if held.window_ends is None:
                held.window_ends = now + consumer.window_s

    def _select(self, port: Port, tensors: list[JsonObject]) -> list[JsonObject] | Missing:
        if port.tensor is None:
            return tensors
        for tensor in tensors:
            if tensor["name"] == port.tensor:
                return [tensor]
        step = port.reference.step
        produced = ", ".join(repr(t["name"]) for t in tensors) or "none"
        if step is None:
            return Missing(400, f"{port.text!r} names input tensor {port.tensor!r}, which the request does not hold")
        what = "received" if port.reference.side == "inputs" else "produced"
        # A model answering without a tensor the spec relies on is an upstream failure.
        return Missing(502, f"{port.text!r} names tensor {port.tensor!r}, but step {step!r} {what} only: {produced}")

    def _trigger(self, port: Port, tensors: list[JsonObject]) -> bool:
        selected = tensors if port.tensor is None else [t for t in tensors if t["name"] == port.tensor]
        if not selected:
            return False
        return self.rule is TriggerRule.PRESENT or any(has_truthy_element(t) for t in selected)

    # ------------------------------------------------------------------ joins

    def _exhausted(self, name: str) -> bool:
        return name != OUTPUT_NAME and self.fired[name] >= self.max_runs

    def _live_steps(self) -> set[str]:
        """Steps that may still emit: running ones, and (a least fixed point, so a cycle cannot keep itself
        alive on nothing) those whose joins could still be satisfied by what they hold and live steps."""
        live = set(self.running.values())
        changed = True
        while changed:
            changed = False
            for name, step in self.graph.steps.items():
                if name not in live and not self._exhausted(name) and could_fire(step, self.held[name], live):
                    live.add(name)
                    changed = True
        return live

    def _window_ends(self) -> list[float]:
        """When a waiting OUTER join's window closes: the loop must wake then even if no step finishes."""
        if not self.has_outer_join:
            return []
        live = self._live_steps()
        now = self.loop.time()
        ends: list[float] = []
        for consumer in self.consumers:
            name, held = consumer.name, self.held[consumer.name]
            outer = JoinType.OUTER in (consumer.inputs_join, consumer.triggers_join)
            # A window already closed is not what the join waits for (a step still running is): no busy loop.
            closes = held.window_ends
            waiting = outer and closes is not None and closes > now and not self._exhausted(name)
            if waiting and closes is not None and could_fire(consumer, held, live):
                ends.append(closes)
        return ends

    def _advance(self) -> None:
        """Fire everything ready, again and again: a step starting emits its inputs, which may ready others."""
        progress = True
        while progress and self.response is None:
            progress = False
            live = self._live_steps() if self.has_outer_join else _NOT_ASKED
            now = self.loop.time()
            for consumer in self.consumers:
                name = consumer.name
                if not ready_to_fire(consumer, self.held[name], live, now):
                    continue
                if self._exhausted(name) and not self.graph.allow_cycles:
                    self.held[name] = Held()  # a later ANY/OUTER arrival: each step runs once
                    continue
                # Firing makes no step less live (a ready step was live already), so one pass can fire every
                # ready step; what their inputs ready in turn is found by the next pass.
                self._fire(consumer)
                if name == OUTPUT_NAME:
                    return
                progress = True

    # ------------------------------------------------------------------ firing

    def _assemble(self, consumer: Consumer, held: Held, where: str) -> list[JsonObject]:
        tensors: list[JsonObject] = []
        origin: dict[str, str] = {}
        for index, port in enumerate(consumer.inputs):
            selected = held.data.get(index)
            if selected is None:
                continue
            if isinstance(selected, Missing):
                raise InferenceError(selected.status, f"pipeline {self.graph.name!r} {where}: {selected.message}")
            prefix = port.key_prefix(self.graph.name)
            for tensor in selected:
                name = consumer.tensor_map.get(f"{prefix}.{tensor['name']}", tensor["name"])
                if name in origin:
                    raise InferenceError(
                        500,
                        f"pipeline {self.graph.name!r} {where}: two tensors named {name!r} meet, from "
                        f"{origin[name]} and {prefix}; rename one with tensorMap",
                    )
                origin[name] = prefix
                tensors.append(renamed(tensor, name))
        return tensors

    def _fire(self, consumer: Consumer) -> None:
        held = self.held[consumer.name]
        self.held[consumer.name] = Held()
        if consumer.name == OUTPUT_NAME:
            outputs = self._assemble(consumer, held, "output")
            self.response = {"model_name": self.graph.name, "id": self.request_id, "outputs": outputs}
            return
        name = consumer.name
        self.fired[name] += 1
        if self.fired[name] > self.max_runs:
            raise InferenceError(
                LOOP_STATUS,
                f"pipeline {self.graph.name!r} step {name!r} would run a {self.fired[name]}th time; "
                f"maxStepRevisits is {self.graph.max_step_revisits}",
            )
        tensors = self._assemble(consumer, held, f"step {name!r}")
        self._emit((name, "inputs"), tensors)
        body: JsonObject = {"id": self.request_id, "inputs": tensors}
        if isinstance(self.parameters, dict):
            body["parameters"] = self.parameters
        task = self.loop.create_task(self._call(consumer, body), name=f"pipeline {self.graph.name} step {name}")
        self.running[task] = name
        if self.trace is not None:
            self.traced[task] = self.trace.started(name, consumer.model, tensors)
        task.add_done_callback(self._step_done)

    async def _call(self, step: Consumer, body: JsonObject) -> list[JsonObject]:
        started = time.perf_counter()
        try:
            response = await self.call_model(step.model, body, self.headers)
        except InferenceError as error:
            self._time_step(step, False, started)
            raise _StepError(step.name, _pipeline_status(error.status), error.message) from None
        except Exception as error:
            self._time_step(step, False, started)
            # Whatever the caller raised, the request fails naming the step (the adapter logs details).
            raise _StepError(step.name, 502, f"{type(error).__name__}: {error}") from None
        self._time_step(step, True, started)
        try:
            return check_response(response, self.limits)
        except TensorError as error:
            raise _StepError(step.name, 502, f"malformed response: {error}") from None

    def _time_step(self, step: Consumer, ok: bool, started: float) -> None:
        if self.step_timer is not None:
            self.step_timer(self.graph.name, step.name, ok, time.perf_counter() - started)

    # ------------------------------------------------------------------ endings

    def _no_output(self) -> InferenceError:
        not_run = [name for name, count in self.fired.items() if count == 0]
        untriggered = [name for name in not_run if name in self.untriggered]
        starved = [name for name in not_run if name not in self.untriggered]
        parts = []
        if untriggered:
            parts.append(f"steps not triggered: {', '.join(untriggered)}")
        if starved:
            parts.append(f"steps whose inputs never arrived: {', '.join(starved)}")
        detail = "; ".join(parts) or "the output's join was not satisfied"
        return InferenceError(
            NO_OUTPUT_STATUS, f"pipeline {self.graph.name!r} produced no output for this request ({detail})"
        )

    def _timed_out(self, timeout_s: float | None) -> InferenceError:
        running = sorted(set(self.running.values()))
        waiting = f"; still running: {', '.join(running)}" if running else ""
        return InferenceError(504, f"pipeline {self.graph.name!r} did not finish within {timeout_s}s{waiting}")
