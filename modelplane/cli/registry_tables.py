"""The registry's documents as text for a terminal (``--output table``): a list as aligned columns, one document as
``key  value`` lines (nested values as compact JSON). ``--output json`` prints the registry's JSON as it came."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from modelplane.bounded_text import cut, one_line

Column = tuple[str, Callable[[dict[str, Any]], str]]
MAX_CELL_CHARS: Final = 60


def _time(value: Any) -> str:
    if not isinstance(value, int):
        return ""
    return datetime.datetime.fromtimestamp(value, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _field(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda document: _text(document.get(key))


def _metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else _text(value)


def _metrics(document: dict[str, Any]) -> str:
    metrics = document.get("evaluationMetrics") or {}
    return " ".join(f"{name}={_metric(value)}" for name, value in metrics.items()) if isinstance(metrics, dict) else ""


EXPERIMENT_COLUMNS: Final[Sequence[Column]] = (
    ("NAME", _field("name")),
    ("SRCPATH", _field("srcpath")),
    ("OUTCOME", _field("outcome")),
    ("OUTCOME TYPE", _field("outcomeType")),
    ("CREATED (UTC)", lambda document: _time(document.get("createtime"))),
)
SPLIT_COLUMNS: Final[Sequence[Column]] = (
    ("ID", _field("id")),
    ("TYPE", _field("type")),
    ("PERCENT", lambda document: _metric((document.get("parameters") or {}).get("percent"))),
    ("SEED", lambda document: _text((document.get("parameters") or {}).get("seed"))),
    ("STATUS", _field("status")),
    ("MODELS", lambda document: str(len(document.get("models") or []))),
    ("CREATED (UTC)", lambda document: _time(document.get("createtime"))),
)

VERSION_COLUMNS: Final[Sequence[Column]] = (
    ("VERSION", _field("version")),
    ("SHA256", lambda document: _text((document.get("manifest") or {}).get("sha256sum"))[:12]),
    ("METRICS", _metrics),
    ("TRAINING RUN", lambda document: _text((document.get("lineage") or {}).get("trainingRun"))),
    ("CREATED (UTC)", lambda document: _time(document.get("createtime"))),
)
DATASET_COLUMNS: Final[Sequence[Column]] = (
    ("ID", _field("id")),
    ("SRCPATH", _field("srcpath")),
    ("FORMAT", _field("format")),
    ("SAMPLES", _field("sampleCount")),
    ("SHA256", lambda document: _text(document.get("sha256"))[:12]),
    ("CREATED (UTC)", lambda document: _time(document.get("createtime"))),
)


def model_columns(sort: str | None) -> Sequence[Column]:
    """A model list's columns; sorted by a metric, that metric has a column of its own, next to the status."""
    by_metric: list[Column] = []
    if sort is not None:
        by_metric = [(sort.upper(), lambda document: _metric((document.get("evaluationMetrics") or {}).get(sort)))]
    return (
        ("ID", _field("id")),
        ("NAME", _field("name")),
        ("STATUS", _field("status")),
        *by_metric,
        ("ALGORITHM", _field("algorithm")),
        ("METRICS", _metrics),
        ("CREATED (UTC)", lambda document: _time(document.get("createtime"))),
    )


def _cell(text: str) -> str:
    # One line per row, and nothing a terminal would act on (escape sequences), whatever a name or description holds.
    return cut(one_line(text), MAX_CELL_CHARS)


def table(documents: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    rows = [[heading for heading, _ in columns]]
    rows += [[_cell(render(document)) for _, render in columns] for document in documents]
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def document_lines(document: Any) -> str:
    if not isinstance(document, dict):
        return _text(document)
    width = max((len(key) for key in document), default=0)
    return "\n".join(f"{key.ljust(width)}  {_text(value)}" for key, value in document.items())
