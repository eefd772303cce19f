"""What one agent holds on its inference server, and every load, unload and eviction of it.

Invariants:
- Operations on one model are serialised (a FIFO lock per model name), in the order they arrived.
- Registered models (what the scheduler placed here) never exceed memory x (100 + over-commit%) / 100;
  a load that would is refused with LOAD_FAIL_MEMORY.
- Models on the server never exceed the replica's memory: a load evicts least-recently-used models
  first, only as many as it needs, never one that is loading. Evicted models stay registered, with
  their files in place, and are loaded again on their next request (``ensure_on_server``).
- A registered model holds its artifact in the cache (ArtifactStore holds, by loaded name); the scheduler's
  unload releases it, and the cache removes an artifact no registered model holds. The repository links
  the cached files rather than copying them, so a model takes its disk space once.
- Every operation ends in exactly one event; nothing waits forever (artifact fetches and server calls
  have timeouts, and server failures worth retrying are retried a bounded number of times).
- While the server is down (``server_down``, from the agent's watch of it) nothing counts as on it, every
  call to it in flight ends at once with ServerDown, and none is retried: a load fails, an unload succeeds
  (a dead server holds nothing; one that comes back still holding the model has it unloaded by
  ``server_back``), a request for a model gets ServerDown. ``server_back`` makes the server hold again what
  this agent holds (most recently used first, as memory allows; the rest load on their next request) and
  unloads what it holds that is no longer wanted. The server counts as down until that is done (a request
  is not sent to a half-filled server), and a death meanwhile cuts it short at once.
- A load whose call was in flight on the server when it went down may have killed it (a segfault, the OOM
  killer): a first load's LOAD_FAILED says so (``server_died_during_load``: the scheduler's crash-loop guard
  then keeps the version off this replica), and a registered model being loaded again is dropped by the next
  ``server_back`` instead of being loaded into every restarted server (the scheduler, seeing the server back
  without it, places it again, and its load's event tells the scheduler if it kills the server again).
- ``busy()`` is True while a call is in flight on the server: a load can block the server's event loop for
  long (MLServer loads in its own process), and the watch does not count failed probes meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from agent.agent_metrics import AgentMetrics
from agent.artifacts import ArtifactError, ArtifactStore
from agent.held_index import is_agents_name, read_index, write_index
from agent.held_models import HeldModel, HeldTable, NoRoom, OperationOutcome, artifact_source
from agent.server_calls import ServerCalls, ServerDown
from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane import logs
from modelplane.keyed_locks import KeyedLocks
from modelplane.spec.model_resources import memory_needed, requested_instances
from servers.adapter import InferenceServer, ModelFiles, ServerError

log = logging.getLogger(__name__)
Event = agent_pb2.ModelEvent
# Operations that did not do what they were asked: logged at warning (the scheduler logs a failed load too).
_FAILURES = frozenset({Event.KIND_LOAD_FAILED, Event.KIND_LOAD_FAIL_MEMORY, Event.KIND_UNLOAD_FAILED})


class ModelManager:
    def __init__(
        self,
        server: InferenceServer,
        artifacts: ArtifactStore,
        *,
        memory_bytes: int,
        overcommit_percent: int,
        load_retries: int = 3,
        retry_delay_seconds: float = 1.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.server = server
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.artifacts = artifacts
        self.memory_bytes = memory_bytes
        self.accept_bytes = memory_bytes * (100 + overcommit_percent) // 100
        self.models = HeldTable()  # loaded name -> model
        self._locks = KeyedLocks()
        # Held while memory on the server changes hands (evictions, loads, unloads): room is computed and
        # taken in one step, so concurrent loads cannot each see the same free memory, and a model is
        # never unloaded twice at once.
        self._server_memory = asyncio.Lock()
        # Every call to the server, ended at once when it goes down (server_down), and whether it serves.
        self._calls = ServerCalls(retries=load_retries, retry_delay_seconds=retry_delay_seconds)
        # Models whose load call is in flight on the server (loaded name -> model), for server_down to mark.
        self._loads_in_flight: dict[str, HeldModel] = {}

    # ----------------------------------------------------------------- accounting

    @property
    def registered_bytes(self) -> int:
        return sum(m.memory for m in self.models.values())

    @property
    def on_server_bytes(self) -> int:
        return sum(m.memory for m in self.models.values() if m.on_server)

    @property
    def available_bytes(self) -> int:
        return max(0, self.memory_bytes - self.on_server_bytes)

    def held(self) -> list[agent_pb2.LoadedModel]:
        """What to report when registering: every model registered here that has served (evicted ones included), not
        one still on its first load: a scheduler told of it would count it Available before it is."""
        return [
            agent_pb2.LoadedModel(name=m.name, version=m.version, memory_bytes=m.memory)
            for m in self.models.values()
            if m.ready and not m.server_died_loading  # the next server_back drops such a model
        ]

    @property
    def down_reason(self) -> str | None:
        """Why the server does not serve; None while it does (set by server_down, cleared once server_back is done)."""
        return self._calls.down_reason

    def busy(self) -> bool:
        """True while a call (a load, an unload, the index) is in flight on the server."""
        return self._calls.busy()

    def latest_version(self, name: str) -> HeldModel | None:
        """The newest version of ``name`` that can answer (a first load still in progress cannot)."""
        versions = [m for m in self.models.versions(name) if m.ready]
        return max(versions, key=lambda m: m.version) if versions else None

    # ----------------------------------------------------------------- start-up

    async def adopt_from_server(self) -> None:
        """After an agent restart: take over what the server still holds (per the index file)."""
        index = read_index(self.server.repository)
        for loaded_name in await self.server.loaded_models():
            if not is_agents_name(loaded_name):
                continue  # not loaded by an agent: leave it alone
            name, _, version = loaded_name.rpartition("_")
            memory = int(index.get(loaded_name, {}).get("memory", 0))
            self.models[loaded_name] = HeldModel(name, int(version), memory, files=None, last_used=time.monotonic())
        log.info("adopted %d model(s) the server already held", len(self.models))
        await self._forget_what_was_not_adopted(index)

    async def _forget_what_was_not_adopted(self, index: dict[str, dict[str, Any]]) -> None:
        """What the agent held before its restart and the server no longer serves leaves the disk: its
        placed folder, and every cached artifact no adopted model holds (the scheduler sends those loads
        again, and they are fetched again)."""
        for loaded_name in index:
            if loaded_name not in self.models:
                try:
                    self.server.remove_files(loaded_name)
                except (ServerError, OSError) as error:
                    log.warning("could not remove the files of %s: %s", loaded_name, error)
        holds = {name: key for name in self.models if isinstance(key := index.get(name, {}).get("artifact"), str)}
        await self.artifacts.keep_only(holds)
        self._write_index()

    # ----------------------------------------------------------------- operations

    async def handle(self, operation: agent_pb2.ModelOperation) -> agent_pb2.ModelEvent:
        """Carry out one operation from the scheduler and say how it went."""
        name, version = operation.model.meta.name, operation.version
        with logs.bound(model=name, version=version):
            return await self._handle(operation, name, version)

    async def _handle(self, operation: agent_pb2.ModelOperation, name: str, version: int) -> agent_pb2.ModelEvent:
        started = time.monotonic()
        async with self._locks.hold(name):
            began = time.monotonic()
            if operation.kind == agent_pb2.ModelOperation.KIND_LOAD and self.down_reason is not None:
                outcome = OperationOutcome(Event.KIND_LOAD_FAILED, str(ServerDown(self.down_reason)))
            elif operation.kind == agent_pb2.ModelOperation.KIND_LOAD:
                outcome = await self._load(operation.model, version)
            else:
                outcome = await self._unload(name, version)
        self._measure(outcome.kind, began - started, time.monotonic() - began)
        self._write_index()
        log.log(
            logging.WARNING if outcome.kind in _FAILURES else logging.INFO,
            "%s %s_%d in %.2fs%s%s",
            Event.Kind.Name(outcome.kind).removeprefix("KIND_").lower().replace("_", " "),
            name,
            version,
            time.monotonic() - started,
            f": {outcome.reason}" if outcome.reason else "",
            " (the server went down while it loaded: the load may have killed it)" if outcome.server_died else "",
        )
        return Event(
            operation_id=operation.operation_id,
            kind=outcome.kind,
            model_name=name,
            model_version=version,
            reason=outcome.reason,
            available_memory_bytes=self.available_bytes,
            server_died_during_load=outcome.server_died,
        )

    def _measure(self, kind: int, waited: float, took: float) -> None:
        metrics = self.metrics
        metrics.queue_delay_ms.observe(waited * 1000)
        if kind == Event.KIND_LOADED:
            metrics.load_ms.observe(took * 1000)
        elif kind == Event.KIND_UNLOADED:
            metrics.unload_ms.observe(took * 1000)
        elif kind == Event.KIND_UNLOAD_FAILED:
            metrics.unload_failures.inc()
        else:  # KIND_LOAD_FAILED, KIND_LOAD_FAIL_MEMORY
            metrics.load_failures.inc()

    async def _load(self, model: pb.Model, version: int) -> OperationOutcome:
        loaded_name = f"{model.meta.name}_{version}"
        held = self.models.get(loaded_name)
        if held is not None and held.on_server:
            held.last_used = time.monotonic()
            return OperationOutcome(Event.KIND_LOADED)  # idempotent: a repeated load changes nothing
        memory = memory_needed(model)  # the formula the scheduler places by (modelplane/spec), so both agree
        if held is None and self.registered_bytes + memory > self.accept_bytes:
            return OperationOutcome(
                Event.KIND_LOAD_FAIL_MEMORY,
                f"{self.registered_bytes} bytes registered + {memory} needed exceeds the replica's "
                f"{self.accept_bytes} bytes (memory + over-commit)",
            )
        try:
            folder = await self.artifacts.fetch(artifact_source(model), holder=loaded_name)
            files = ModelFiles(
                name=model.meta.name,
                version=version,
                artifact_dir=folder,
                requirements=frozenset(model.modelSpec.requirements),
                parameters={p.name: p.value for p in model.modelSpec.parameters},
                instance_count=requested_instances(model),
                linkable=self.artifacts.owns(folder),
            )
            await self.server.place_files(files)
        except (ArtifactError, ServerError) as error:
            await self._release_unless_registered(loaded_name)
            return OperationOutcome(Event.KIND_LOAD_FAILED, str(error))
        entry = HeldModel(model.meta.name, version, memory, files, on_server=False, loading=True, ready=False)
        self.models[loaded_name] = entry
        try:
            await self._bring_onto_server(entry)
        except (NoRoom, ServerError) as error:
            # Nothing of a load that failed stays: not the registration, the placed folder, nor the cached artifact.
            del self.models[loaded_name]
            self.server.remove_files(loaded_name)
            await self._release_unless_registered(loaded_name)
            if isinstance(error, NoRoom):
                return OperationOutcome(Event.KIND_LOAD_FAIL_MEMORY, str(error))
            return OperationOutcome(Event.KIND_LOAD_FAILED, str(error), server_died=entry.server_died_loading)
        entry.ready = True
        return OperationOutcome(Event.KIND_LOADED)

    async def _unload(self, name: str, version: int) -> OperationOutcome:
        loaded_name = f"{name}_{version}"
        held = self.models.get(loaded_name)
        # An evicted model is known not to be on the server; while the server is down or coming back what it holds is
        # not known, so it is asked (a dead one is not: ServerDown at once).
        may_hold = held is None or held.on_server or self.down_reason is not None
        try:
            async with self._server_memory:
                if may_hold:
                    await self._calls.retrying(lambda: self.server.unload(loaded_name))
                    if held is not None:
                        held.on_server = False
        except ServerDown:
            pass  # a dead server holds nothing; if it comes back holding the model, server_back unloads it
        except ServerError as error:
            return OperationOutcome(Event.KIND_UNLOAD_FAILED, str(error))
        self.models.pop(loaded_name, None)
        self.server.remove_files(loaded_name)
        await self.artifacts.release(loaded_name)
        return OperationOutcome(Event.KIND_UNLOADED)

    async def _release_unless_registered(self, loaded_name: str) -> None:
        """After a failed load: the artifact is released unless the version stays registered (evicted)."""
        if loaded_name not in self.models:
            await self.artifacts.release(loaded_name)

    # ----------------------------------------------------------------- on-demand reload

    async def ensure_on_server(self, name: str, version: int | None = None) -> str | None:
        """The loaded name to send a request for ``name`` to, loading it again if it was evicted.

        None when this agent does not hold the model. Counts as a use for LRU.
        """
        held = self.models.get(f"{name}_{version}") if version is not None else self.latest_version(name)
        if held is None or not held.ready:
            return None
        if self.down_reason is not None:
            raise ServerDown(self.down_reason)
        held.last_used = time.monotonic()
        if held.on_server:
            return held.loaded_name
        started = time.monotonic()
        async with self._locks.hold(name):
            if not held.on_server and held.loaded_name in self.models:
                held.loading = True
                await self._bring_onto_server(held)
                self.metrics.cache_miss_ms.observe((time.monotonic() - started) * 1000)
        return held.loaded_name

    async def _bring_onto_server(self, entry: HeldModel) -> None:
        """Make room by evicting LRU models, then load ``entry``. Raises NoRoom or ServerError."""
        try:
            async with self._server_memory:
                if entry.on_server:
                    return  # another request brought it back while this one waited
                await self._make_room(entry)
                await self._load_call(entry)
                entry.on_server = True
                entry.last_used = time.monotonic()
        finally:
            entry.loading = False

    async def _load_call(self, entry: HeldModel) -> None:
        """Load ``entry`` on the server (retrying what may pass); a death of the server meanwhile marks it."""
        self._loads_in_flight[entry.loaded_name] = entry
        try:
            await self._calls.retrying(lambda: self.server.load(entry.loaded_name))
        finally:
            self._loads_in_flight.pop(entry.loaded_name, None)

    async def _make_room(self, entry: HeldModel) -> None:
        needed = self.on_server_bytes + entry.memory - self.memory_bytes
        if needed <= 0:
            return
        candidates = sorted(
            (m for m in self.models.values() if m.on_server and not m.loading and m is not entry),
            key=lambda m: m.last_used,
        )
        if sum(m.memory for m in candidates) < needed:
            raise NoRoom(
                f"{entry.loaded_name} needs {entry.memory} bytes; even evicting every idle model frees only "
                f"{sum(m.memory for m in candidates)} of the {needed} missing"
            )
        for victim in candidates:
            if needed <= 0:
                break
            await self._calls.call(functools.partial(self.server.unload, victim.loaded_name))
            victim.on_server = False
            needed -= victim.memory
            self.metrics.evictions.inc()
            self.metrics.age_at_eviction_ms.observe(max(0.0, time.monotonic() - victim.last_used) * 1000)
            log.info("evicted %s (least recently used) to make room for %s", victim.loaded_name, entry.loaded_name)

    async def unload_everything(self) -> None:
        """On agent exit after a drain: take every model off the server."""
        for held in list(self.models.values()):
            async with self._locks.hold(held.name), self._server_memory:
                try:
                    if held.on_server:
                        await self._calls.call(functools.partial(self.server.unload, held.loaded_name))
                    self.server.remove_files(held.loaded_name)
                    await self.artifacts.release(held.loaded_name)
                except ServerError as error:
                    log.warning("could not unload %s on exit: %s", held.loaded_name, error)
                self.models.pop(held.loaded_name, None)
        self._write_index()

    # ----------------------------------------------------------------- the server's health

    def server_down(self, reason: str) -> None:
        """The server stopped serving (it died, or stopped answering). See the module docstring."""
        self._calls.went_down(reason)
        for held in self.models.values():
            held.on_server = False
        for held in self._loads_in_flight.values():
            held.server_died_loading = True

    async def server_back(self) -> None:
        """The server answers again (restarted, or no longer busy): make it hold what this agent holds, most recently
        used first and as memory allows, and unload what it holds that is not ours any more; then it serves
        (``down_reason`` is cleared). A model that cannot be loaded again (the model's fault), or whose load was in
        flight when the server went down (it may have killed it), is dropped, so it is not reported as held. The
        memory lock is taken per model, so operations meanwhile (the scheduler's unloads) are not held up behind
        the whole reload. Raises ServerError (ServerDown) when the server fails again meanwhile."""
        down = self._calls.answering_again()  # this server's: an earlier death does not cut calls to it short
        for held in [m for m in self.models.values() if m.server_died_loading]:
            log.warning(
                "dropping %s: the server went down while it was being loaded, which may be what killed it; the "
                "scheduler places it again, and learns from that load if it kills the server again",
                held.loaded_name,
            )
            await self._forget(held)
        on_server = set(await self._calls.call(self.server.loaded_models))
        for loaded_name in sorted(on_server - set(self.models)):
            if is_agents_name(loaded_name):
                log.info("unloading %s: the server holds it, but this agent no longer does", loaded_name)
                async with self._server_memory:
                    await self._calls.retrying(functools.partial(self.server.unload, loaded_name))
        for held in sorted(self.models.values(), key=lambda m: m.last_used, reverse=True):
            async with self._server_memory:
                if self.models.get(held.loaded_name) is not held:
                    continue  # unloaded meanwhile
                if held.loaded_name in on_server:
                    held.on_server = True
                elif held.ready and self.on_server_bytes + held.memory <= self.memory_bytes:
                    await self._load_again(held)
        if down.is_set():
            raise ServerDown(self.down_reason or "it went down again as the models were loaded again")
        self._calls.serving_again()
        self._write_index()

    async def _load_again(self, held: HeldModel) -> None:
        try:
            await self._load_call(held)
        except ServerDown:
            raise  # not the model's fault (or, if it killed the server, the next server_back drops it)
        except ServerError as error:
            if error.retryable:
                raise
            log.warning(
                "dropping %s: it could not be loaded again on the restarted server: %s", held.loaded_name, error
            )
            await self._forget(held)
            return
        held.on_server = True
        log.info("loaded %s again on the server", held.loaded_name)

    async def _forget(self, held: HeldModel) -> None:
        """Drop a registered model this agent will not load again: its registration, placed files and artifact."""
        self.models.pop(held.loaded_name, None)
        self.server.remove_files(held.loaded_name)
        await self.artifacts.release(held.loaded_name)

    def _write_index(self) -> None:
        """Remember each loaded model's memory next to the repository, for adoption after a restart."""
        document: dict[str, dict[str, Any]] = {}
        for m in self.models.values():
            artifact = self.artifacts.held_key(m.loaded_name)  # held again after a restart (adopt_from_server)
            document[m.loaded_name] = {"memory": m.memory} | ({"artifact": artifact} if artifact else {})
        write_index(self.server.repository, document)
