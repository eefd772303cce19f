"""Comparing an experiment's models by one of their evaluation metrics (``GET /experiments/{name}/models?sort=``).

Each metric the registry knows has a better direction: higher is better for accuracy, precision, recall, f1,
roc_auc, r2 and evariance (explained variance); lower is better for rmse, mae, mse and log_loss. Sorting by a metric
without an order puts the best first; ``order=desc`` / ``order=asc`` asks for highest / lowest first whatever the
metric. Models that lack the metric (not trained yet, or a metric their test split left undefined) come last, in
creation order, as do ties among the rest. A metric or order not in these tables is the caller's mistake (400)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from registry.errors import InvalidInput


class Order(Enum):
    DESCENDING = "desc"  # highest first
    ASCENDING = "asc"  # lowest first


HIGHER_IS_BETTER: Final = ("accuracy", "precision", "recall", "f1", "roc_auc", "r2", "evariance")
LOWER_IS_BETTER: Final = ("rmse", "mae", "mse", "log_loss")
BETTER_FIRST: Final[Mapping[str, Order]] = {
    **dict.fromkeys(HIGHER_IS_BETTER, Order.DESCENDING),
    **dict.fromkeys(LOWER_IS_BETTER, Order.ASCENDING),
}
ORDERS: Final = tuple(order.value for order in Order)
MAX_SHOWN_CHARS: Final = 64  # of a refused value, in the error


@dataclass(frozen=True, slots=True)
class MetricOrder:
    metric: str
    order: Order


def metric_order(sort: str, order: str | None) -> MetricOrder:
    """The order ``sort`` and ``order`` (None: the metric's better direction) ask for, or InvalidInput naming the
    value that is not known."""
    better = BETTER_FIRST.get(sort)
    if better is None:
        raise InvalidInput(
            f"sort: unknown metric {sort[:MAX_SHOWN_CHARS]!r} (known: {', '.join(sorted(BETTER_FIRST))})"
        )
    if order is None:
        return MetricOrder(sort, better)
    try:
        return MetricOrder(sort, Order(order))
    except ValueError:
        raise InvalidInput(f"order: unknown order {order[:MAX_SHOWN_CHARS]!r} (known: {', '.join(ORDERS)})") from None
