"""Reading Prometheus metrics in tests: from a live process's /metrics (the text format, parsed by prometheus_client's
own parser) or from a registry in this interpreter."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable

import aiohttp
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families


async def scrape(http: aiohttp.ClientSession, url: str) -> list[Metric]:
    """The metric families ``url`` (a /metrics URL) answers with; the answer must be a 200 in the text format."""
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain"), response.headers["Content-Type"]
        text = await response.text()
    return list(text_string_to_metric_families(text))


def scrape_text(url: str) -> list[Metric]:
    """:func:`scrape` for synchronous tests."""
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a loopback URL the test made
        assert response.status == 200
        return list(text_string_to_metric_families(response.read().decode()))


def sample_sum(families: Iterable[Metric], sample: str, **labels: str) -> float:
    """The sum of every sample called ``sample`` (e.g. ``x_total``, ``x_count``) whose labels include ``labels``."""
    wanted = labels.items()
    return sum(
        s.value for family in families for s in family.samples if s.name == sample and wanted <= s.labels.items()
    )


def sample_names(families: Iterable[Metric]) -> set[str]:
    return {s.name for family in families for s in family.samples}


def registry_sum(registry: CollectorRegistry, sample: str, **labels: str) -> float:
    return sample_sum(registry.collect(), sample, **labels)
