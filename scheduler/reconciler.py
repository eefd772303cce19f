"""The scheduler's loops over the cluster: the synchroniser, the reconcile loop and the scale-down loop.

- Nothing is placed until the synchroniser is ready: after a restart, the agents that held models get a grace
  period to reconnect and report them, so nothing is loaded twice or moved needlessly. The grace runs from the
  later of the restore and the last expected replica's return, so replicas still coming back one after another
  (a thousand agents whose backoff grew while the scheduler restored 100,000 records) are waited for, while one
  that stays away costs one grace after the others; it never runs past ``MAX_GRACE_PERIODS`` graces in all.
- Reconciles are synchronous Cluster calls, and their triggers coalesce in one dirty set drained by one loop,
  a batch at a time so that RPCs get in between batches.
- New capacity (a replica registering, memory freed) retries the models waiting for it
  (``Cluster.waiting_for_capacity``) once per round of the loop, however many times it changed meanwhile: a restart's
  thousand registrations cost one pass over the waiting models, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from modelplane import logs
from scheduler.models.cluster import Cluster

log = logging.getLogger(__name__)

# The synchroniser waits at most this many grace periods from the restore, however long replicas keep returning.
MAX_GRACE_PERIODS = 3


class Reconciler:
    """The dirty set of models to reconcile and the loops that drain it. ``after_change`` publishes, persists and
    marks dirty what the last Cluster change touched (the façade's, called after every batch)."""

    def __init__(
        self,
        cluster: Cluster,
        after_change: Callable[[], None],
        *,
        reconcile_batch: int,
        scale_down_idle_seconds: float,
    ) -> None:
        self._cluster = cluster
        self._after_change = after_change
        self._reconcile_batch = reconcile_batch
        self._scale_down_idle_seconds = scale_down_idle_seconds
        self.ready = asyncio.Event()
        self._dirty: dict[str, bool] = {}  # model name -> whether to retry a failed placement
        self._capacity_changed = False  # the models waiting for capacity join the next round
        self._wake = asyncio.Event()
        self._expected_replicas: set[tuple[str, int]] = set()
        self._grace_seconds = 0.0
        self._sync_deadline = 0.0  # the grace's end: moved on each time an expected replica returns
        self._sync_last_deadline = 0.0  # MAX_GRACE_PERIODS graces from the restore
        # Told how long each model's reconcile (its placement) took, in seconds: the scheduler's metrics.
        self.observe_placement: Callable[[float], None] = _ignore

    @property
    def busy(self) -> bool:
        """Whether models are waiting to be reconciled (tests wait for the scheduler to be quiet)."""
        return bool(self._dirty) or self._capacity_changed or self._wake.is_set()

    @property
    def expected_replica_count(self) -> int:
        return len(self._expected_replicas)

    def expect(self, replicas: Iterable[tuple[str, int]]) -> None:
        """(server, index) replicas the synchroniser waits for before the scheduler is ready."""
        self._expected_replicas.update(replicas)

    def start_grace(self, seconds: float) -> None:
        """Start the synchroniser's grace period: ready once it has passed with no expected replica returning, and
        after ``MAX_GRACE_PERIODS`` of them at the latest."""
        now = time.monotonic()
        self._grace_seconds = seconds
        self._sync_deadline = now + seconds
        self._sync_last_deadline = now + MAX_GRACE_PERIODS * seconds

    def mark(self, reconcile: dict[str, bool], *, capacity_changed: bool = False) -> None:
        """Reconcile these models (name -> retry a failed placement) on the loop's next round; with
        ``capacity_changed``, every model waiting for capacity then too (retrying failed placements)."""
        for name, retry in reconcile.items():
            self._dirty[name] = self._dirty.get(name, False) or retry
        self._capacity_changed = self._capacity_changed or capacity_changed
        self._wake.set()

    async def synchroniser(self) -> None:
        """Ready once every expected replica has reconnected, or the grace period is over (module docstring)."""
        missing_before = len(self._expected_replicas)
        while not self.ready.is_set():
            connected = {(s.name, i) for s in self._cluster.servers.values() for i in s.replicas}
            missing = self._expected_replicas - connected
            now = time.monotonic()
            if len(missing) < missing_before:  # expected replicas came back: give the others a grace from now
                missing_before = len(missing)
                self._sync_deadline = min(max(self._sync_deadline, now + self._grace_seconds), self._sync_last_deadline)
            if not missing or now >= self._sync_deadline:
                if missing:
                    log.warning(
                        "starting to schedule without %d expected replica(s): %s", len(missing), sorted(missing)[:10]
                    )
                self.ready.set()
                self._wake.set()
                log.info("scheduler ready")
                return
            await asyncio.sleep(0.05)

    async def reconcile_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.ready.is_set():
                continue  # the synchroniser wakes us once ready
            batch, self._dirty = self._dirty, {}
            if self._capacity_changed:
                self._capacity_changed = False
                for name in self._cluster.waiting_for_capacity:
                    batch[name] = True
            observe = self.observe_placement
            for count, (name, retry) in enumerate(batch.items(), 1):
                token = logs.bind(model=name)
                started = time.perf_counter()
                try:
                    self._cluster.reconcile(name, retry_failed=retry)
                except Exception:
                    log.exception("reconcile of model %r failed; it will be retried on the next change", name)
                finally:
                    logs.unbind(token)
                observe(time.perf_counter() - started)
                if count % self._reconcile_batch == 0:
                    self._after_change()
                    await asyncio.sleep(0)
            self._after_change()

    async def scale_down_loop(self) -> None:
        interval = max(0.05, min(30.0, self._scale_down_idle_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            if self.ready.is_set():
                self._cluster.request_scale_downs(time.time(), self._scale_down_idle_seconds)
                self._after_change()


def _ignore(_seconds: float) -> None:
    pass
