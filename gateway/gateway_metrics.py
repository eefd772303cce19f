"""The gateway's counters, served in Prometheus' text format on /metrics."""

from __future__ import annotations

from collections import Counter

_HELP = {
    "modelplane_gateway_requests_total": "Inference requests answered, by kind, name, route taken and HTTP status.",
    "modelplane_gateway_mirror_requests_total": "Mirrored copies sent, by experiment, mirror and outcome.",
    "modelplane_gateway_replica_retries_total": "Requests retried on another replica, by model.",
    "modelplane_gateway_replica_ejections_total": (
        "Times a replica was skipped for a while (no connection to it, or its proxy said its server is down)."
    ),
}


_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    # The text format's escapes for label values: backslash, double quote and line feed.
    return "{" + ",".join(f'{key}="{value.translate(_LABEL_ESCAPES)}"' for key, value in pairs) + "}"


class GatewayMetrics:
    def __init__(self) -> None:
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def count(self, metric: str, **labels: str) -> None:
        self._counters[(metric, tuple(sorted(labels.items())))] += 1

    def value(self, metric: str, **labels: str) -> int:
        """The sum over every series of ``metric`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(n for (name, pairs), n in self._counters.items() if name == metric and wanted <= set(pairs))

    def render(self) -> str:
        lines: list[str] = []
        for metric, help_text in _HELP.items():
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            for (name, pairs), n in sorted(self._counters.items()):
                if name == metric:
                    lines.append(f"{metric}{_labels(pairs)} {n}")
        return "\n".join(lines) + "\n"
