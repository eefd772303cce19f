"""Experiments in the data plane: weighted traffic split, mirroring and sticky sessions.

* Split: each request picks one candidate with probability weight / sum(weights).
* Mirror: ``percent`` % of requests are also sent to the mirror; its answer is discarded, so a mirror can
  never change what the caller gets.
* Sticky sessions (``config.stickySessions``): the answer names the candidate taken in the
  ``x-modelplane-route`` header; a request that carries that header back, naming a candidate of the same
  experiment, goes to that candidate again. A header naming anything else is ignored (a fresh pick), so a
  client cannot steer traffic to a resource outside the experiment.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.routing_table import ROUTE_HEADER
from generated.mlops.scheduler import scheduler_pb2 as pb


@dataclass(frozen=True, slots=True)
class SplitDecision:
    candidate: str
    mirror: str | None
    sticky: bool


class ExperimentSplitter:
    def __init__(self, rng: random.Random | None = None) -> None:
        # Not cryptographic: traffic splitting needs a fair, fast draw, not an unpredictable one.
        self._rng = rng or random.Random()  # noqa: S311

    def decide(self, experiment: pb.Experiment, headers: Mapping[str, str]) -> SplitDecision:
        names = [c.name for c in experiment.candidates]
        sticky = experiment.HasField("config") and experiment.config.stickySessions
        chosen: str | None = None
        if sticky:
            asked = headers.get(ROUTE_HEADER, "").strip()
            if asked in names:
                chosen = asked
        if chosen is None and names:
            weights = [max(c.weight, 0) for c in experiment.candidates]
            if sum(weights) <= 0:
                weights = [1] * len(names)
            chosen = self._rng.choices(names, weights=weights)[0]
        mirror = None
        # Drawn only when there is a mirror: most experiments have none, and this is per request.
        has_mirror = experiment.HasField("mirror") and bool(experiment.mirror.name)
        if has_mirror and self._rng.random() * 100 < experiment.mirror.percent:
            mirror = experiment.mirror.name
        if chosen is None:
            # A mirror-only experiment: the default takes the traffic (validation guarantees one exists).
            chosen = experiment.default if experiment.HasField("default") else ""
        return SplitDecision(candidate=chosen, mirror=mirror, sticky=sticky)
