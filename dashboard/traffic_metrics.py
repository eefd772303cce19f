"""The live share of each experiment route, from the gateway's counts of each experiment's draws (``/metrics``,
Prometheus' text format): ``modelplane_gateway_experiment_routes_total{experiment,route}``. Those count exactly the
requests the experiment routed; the request counters (by name asked for and route taken) cannot tell a request that
went through the experiment from one for its default model that bypassed it (by version, or before it started).

Only that family is read, by a small parser with limits of its own (a metrics page is another process's output:
its size, line count and line length are bounded here, and a line that does not parse is skipped, never an
error). The share is over a window of recent scrapes (the counters' growth between the oldest and the newest), so
it says where traffic goes now, not since the gateway started.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from dashboard.board_state import JsonView

ROUTES_METRIC = "modelplane_gateway_experiment_routes_total"
MAX_METRICS_BYTES = 8 * 1024 * 1024
MAX_LINE_CHARS = 8192
MAX_SERIES = 50_000
WANTED_LABELS = ("experiment", "route")

# One label pair: name="value" with the text format's escapes (\\, \", \n) inside the quotes.
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_UNESCAPE = re.compile(r"\\(.)")

# experiment, route -> requests it sent there
SeriesKey = tuple[str, str]


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str) -> dict[str, str] | None:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            return None
        labels[match.group(1)] = _unescape(match.group(2))
        position = match.end()
    return labels


def parse_route_counts(body: str) -> dict[SeriesKey, float]:
    """The experiments' route counters in ``body``, by (experiment, route); lines past the limits are left out."""
    counts: dict[SeriesKey, float] = {}
    prefix = ROUTES_METRIC + "{"
    for line in body[:MAX_METRICS_BYTES].splitlines():
        if len(line) > MAX_LINE_CHARS or not line.startswith(prefix):
            continue
        end = line.rfind("}")
        if end < 0:
            continue
        labels = _labels(line[len(prefix) : end])
        fields = line[end + 1 :].split()
        if labels is None or not fields or any(key not in labels for key in WANTED_LABELS):
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if not math.isfinite(value) or value < 0:
            continue
        key = (labels["experiment"], labels["route"])
        if key not in counts and len(counts) >= MAX_SERIES:
            continue
        counts[key] = counts.get(key, 0.0) + value
    return counts


@dataclass(frozen=True, slots=True)
class Scrape:
    at: float  # monotonic seconds
    counts: Mapping[SeriesKey, float]


class TrafficWindow:
    """The last ``size`` scrapes, for the requests each route got between the oldest and the newest."""

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ValueError("a window needs at least two scrapes")
        self._scrapes: deque[Scrape] = deque(maxlen=size)

    def add(self, scrape: Scrape) -> None:
        self._scrapes.append(scrape)

    def experiment_traffic(self, spec: JsonView) -> JsonView:
        """Requests the experiment ``spec`` (experiment_spec_view) sent to each candidate in the window, and each
        one's share."""
        routes = [candidate["name"] for candidate in spec["candidates"]]
        newest = self._scrapes[-1] if self._scrapes else None
        oldest = self._scrapes[0] if len(self._scrapes) > 1 else None
        requests: dict[str, float] = {}
        for route in routes:
            key = (spec["name"], route)
            now = newest.counts.get(key, 0.0) if newest else 0.0
            before = oldest.counts.get(key, 0.0) if oldest else 0.0
            # A counter that went down is a restarted gateway: count what it has since.
            requests[route] = now - before if now >= before else now
        answered = sum(requests.values())
        window = newest.at - oldest.at if newest and oldest else 0.0
        return {
            "name": spec["name"],
            "windowSeconds": round(window, 1),
            "total": answered,
            "routes": [
                {"name": route, "requests": count, "share": (count / answered) if answered else None}
                for route, count in requests.items()
            ],
        }
