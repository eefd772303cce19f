"""The trainer's Prometheus metrics, on a registry of its own, served as /metrics on its run status API.

Runs are counted as this trainer sees them: the ones it is running now by state (read at each scrape), the ones it
finished by final state, how long each took from its claim to its outcome, and the training events it consumed.
The run records of every trainer replica are in Redis (GET /runs); these are this replica's own.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trainer.service.run_registry import FINAL_STATES, RunState

# Seconds: a small scikit-learn run takes a few seconds, a real one hours.
RUN_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_ACTIVE_STATES = [state for state in RunState if state not in FINAL_STATES]


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._events = Counter(
            "modelplane_trainer_events_consumed",
            "Training events taken from the training topic (redeliveries included).",
            registry=self.registry,
        )
        self._finished = Counter(
            "modelplane_trainer_runs_finished",
            "Runs this trainer finished, by final state (a malformed event is a failed run).",
            ("state",),
            registry=self.registry,
        )
        self._duration = Histogram(
            "modelplane_trainer_run_duration_seconds",
            "Time from a run's start to its recorded outcome, by final state.",
            ("state",),
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self._active: dict[str, tuple[RunState, float]] = {}  # run id -> its state now, when it started (monotonic)
        self.registry.register(_ActiveRuns(self._active))

    def event_consumed(self) -> None:
        self._events.inc()

    def run_state(self, run_id: str, state: RunState) -> None:
        """A run of this trainer entered ``state`` (not a final one)."""
        started = self._active.get(run_id, (state, time.monotonic()))[1]
        self._active[run_id] = (state, started)

    def run_finished(self, run_id: str, state: RunState) -> None:
        """A run ended in final ``state``; one never started here (a malformed event) is counted, not timed."""
        self._finished.labels(state.value).inc()
        active = self._active.pop(run_id, None)
        if active is not None:
            self._duration.labels(state.value).observe(time.monotonic() - active[1])

    def run_left(self, run_id: str) -> None:
        """A run is no longer running here: stopped without an outcome (the trainer is stopping, or failed on an
        error of its own), or finished (then nothing is left to do)."""
        self._active.pop(run_id, None)


class _ActiveRuns(Collector):
    def __init__(self, active: dict[str, tuple[RunState, float]]) -> None:
        self._active = active

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        states = Tally(state for state, _started in list(self._active.values()))
        for state in _ACTIVE_STATES:
            family.add_metric([state.value], states.get(state, 0))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "modelplane_trainer_runs", "Runs this trainer is running now, by state.", labels=("state",)
        )
