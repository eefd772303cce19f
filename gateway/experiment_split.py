"""Experiments in the data plane: weighted traffic split, mirroring and sticky sessions.

* Split: each request picks one candidate with probability weight / sum(weights), among the candidates
  that can answer now (``serves``): one that was unloaded or lost its replicas is left out and the others'
  weights are renormalised, so no request goes where nothing answers. None left: no candidate (the router
  answers 503).
* Mirror: ``percent`` % of requests are also sent to the mirror, when it can answer; its answer is
  discarded, so a mirror can never change what the caller gets.
* Sticky sessions (``config.stickySessions``): the answer names the candidate taken in the
  ``x-modelplane-route`` header; a request that carries that header back, naming a candidate of the same
  experiment that can answer, goes to that candidate again. A header naming anything else is ignored (a
  fresh pick), so a client cannot steer traffic to a resource outside the experiment.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.routing_table import ROUTE_HEADER
from generated.mlops.scheduler import scheduler_pb2 as pb


@dataclass(frozen=True, slots=True)
class SplitDecision:
    candidate: str | None  # None: no candidate can answer now
    mirror: str | None
    sticky: bool


class ExperimentSplitter:
    def __init__(self, rng: random.Random | None = None) -> None:
        # Not cryptographic: traffic splitting needs a fair, fast draw, not an unpredictable one.
        self._rng = rng or random.Random()  # noqa: S311

    def decide(
        self, experiment: pb.Experiment, headers: Mapping[str, str], serves: Callable[[str], bool]
    ) -> SplitDecision:
        """Where this request goes; ``serves(name)`` says whether a candidate or the mirror can answer now."""
        live = [c for c in experiment.candidates if serves(c.name)]
        sticky = experiment.HasField("config") and experiment.config.stickySessions
        chosen: str | None = None
        if sticky:
            asked = headers.get(ROUTE_HEADER, "").strip()
            if any(c.name == asked for c in live):
                chosen = asked
        if chosen is None and live:
            weights = [max(c.weight, 0) for c in live]
            if sum(weights) <= 0:
                weights = [1] * len(live)
            chosen = self._rng.choices([c.name for c in live], weights=weights)[0]
        mirror = None
        # Drawn only when there is a mirror: most experiments have none, and this is per request.
        has_mirror = experiment.HasField("mirror") and bool(experiment.mirror.name)
        if has_mirror and self._rng.random() * 100 < experiment.mirror.percent and serves(experiment.mirror.name):
            mirror = experiment.mirror.name
        if chosen is None and not experiment.candidates and experiment.HasField("default"):
            # A mirror-only experiment: the default takes the traffic (validation guarantees one exists).
            chosen = experiment.default if serves(experiment.default) else None
        return SplitDecision(candidate=chosen, mirror=mirror, sticky=sticky)
