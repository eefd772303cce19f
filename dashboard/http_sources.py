"""The two sources the dashboard polls over HTTP: the gateway's ``/metrics`` (for each experiment route's share of
traffic) and the trainer's run status API (``GET /runs``). Each answer is read up to a limit, and a source that
fails is shown as down on the page (with why), never an error of the dashboard's."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from typing import Any

import aiohttp

from dashboard.board_state import JsonView, Kind
from dashboard.live_board import LiveBoard
from dashboard.status_views import MAX_LIST_ITEMS, text
from dashboard.traffic_metrics import MAX_METRICS_BYTES, Scrape, TrafficWindow, parse_route_counts
from modelplane.auth.client_token import ClientToken

log = logging.getLogger(__name__)

MAX_RUNS_BYTES = 4 * 1024 * 1024
RUNS_SHOWN = 50
MAX_METRICS_PER_RUN = 32
REQUEST_TIMEOUT_SECONDS = 10.0


class SourceError(Exception):
    """A source answered with something unusable, or not at all; the message says which."""


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refused once it passes ``limit`` bytes (read no further than that)."""
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise SourceError(f"answered more than {limit} bytes")
    return bytes(body)


class HttpPoller:
    """GET ``url`` every ``interval`` seconds; what each answer means is the subclass's."""

    source = ""

    def __init__(
        self,
        board: LiveBoard,
        url: str,
        interval: float,
        ssl_context: ssl.SSLContext | None,
        token: ClientToken | None,
    ) -> None:
        self._board = board
        self._url = url
        self._interval = interval
        self._ssl = ssl_context
        self._token = token
        self._show(ok=False, detail="connecting")

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    headers = {"Authorization": f"Bearer {self._token.current()}"} if self._token else {}
                    async with session.get(self._url, ssl=self._ssl if self._ssl else True, headers=headers) as answer:
                        if answer.status != 200:
                            raise SourceError(f"answered HTTP {answer.status}")
                        body = await _read_limited(answer, self.limit)
                    self.take(body)
                    self._show(ok=True, detail="")
                except (SourceError, aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as error:
                    self._show(ok=False, detail=text(str(error) or type(error).__name__))
                await asyncio.sleep(self._interval)

    limit = 0

    def take(self, body: bytes) -> None:
        raise NotImplementedError

    def _show(self, *, ok: bool, detail: str) -> None:
        self._board.put(
            Kind.SOURCE, self.source, {"name": self.source, "address": self._url, "ok": ok, "detail": detail}
        )


class GatewayMetricsPoller(HttpPoller):
    """The experiment routes' traffic, over the last ``window`` scrapes."""

    source = "gateway metrics"
    limit = MAX_METRICS_BYTES

    def __init__(  # noqa: PLR0917 - the poller's four, and the window
        self,
        board: LiveBoard,
        url: str,
        interval: float,
        ssl_context: ssl.SSLContext | None,
        token: ClientToken | None,
        window: int = 12,
    ) -> None:
        super().__init__(board, url, interval, ssl_context, token)
        self._window = TrafficWindow(window)

    def take(self, body: bytes) -> None:
        self._window.add(Scrape(time.monotonic(), parse_route_counts(body.decode())))
        state = self._board.state
        specs = (state.view(Kind.EXPERIMENT_SPEC, name) for name in state.names(Kind.EXPERIMENT_SPEC))
        self._board.replace_all(
            Kind.TRAFFIC, {spec["name"]: self._window.experiment_traffic(spec) for spec in specs if spec is not None}
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def run_view(raw: Any) -> JsonView | None:
    """One of the trainer's RunRecords (trainer/service/run_registry.py) as the page shows it; None if it is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("run_id"), str):
        return None
    metrics = raw.get("metrics")
    errors = raw.get("errors")
    shown_metrics: dict[str, float] = {}
    if isinstance(metrics, dict):
        for key, value in list(metrics.items())[:MAX_METRICS_PER_RUN]:
            number = _number(value)
            if number is not None:
                shown_metrics[text(str(key))] = number
    last_error = errors[-1] if isinstance(errors, list) and errors and isinstance(errors[-1], str) else ""
    return {
        "runId": text(raw["run_id"]),
        "state": text(str(raw.get("state", ""))),
        "attempts": _number(raw.get("attempts")),
        "metrics": shown_metrics,
        "modelUri": text(str(raw.get("model_uri", ""))),
        "updatedAt": _number(raw.get("updated_at")),
        "lastError": text(last_error),
    }


class TrainerRunsPoller(HttpPoller):
    """The newest training runs and their metrics."""

    source = "trainer"
    limit = MAX_RUNS_BYTES

    def take(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError as error:
            raise SourceError(f"answered something that is not JSON: {error}") from None
        runs = document.get("runs") if isinstance(document, dict) else None
        if not isinstance(runs, list):
            raise SourceError('answered JSON without a "runs" list')
        views = [view for view in (run_view(raw) for raw in runs[:RUNS_SHOWN]) if view is not None]
        self._board.replace_all(Kind.RUN, {view["runId"]: view for view in views[: MAX_LIST_ITEMS * 4]})


def runs_url(trainer: str) -> str:
    return trainer.rstrip("/") + f"/runs?limit={RUNS_SHOWN}"
