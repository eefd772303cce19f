"""Sending one V2 REST request to a model's replicas: load-balanced, with a bounded retry elsewhere.

Balancing: the replica with the fewest requests in flight from this gateway, ties broken round-robin,
so a slow replica gets less work without any coordination between gateways.

Retry: a replica that cannot be reached, answers 5xx, or answers 404 (the model moved away from it and
the routing update has not arrived yet: the agent proxy says so with 404) is skipped and the request goes
to another replica, at most ``max_attempts`` replicas in all. Any other answer, a 4xx caused by the
request itself included, is the answer. Retrying is safe: inference requests have no side effects.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from gateway.inference_types import InferenceError
from gateway.routing_table import Endpoint

FORWARDED_REQUEST_HEADERS = ("x-request-id", "seldon-request-id", "traceparent", "tracestate")
RETRYABLE_STATUSES = frozenset({404, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class ReplicaAnswer:
    status: int
    body: bytes
    content_type: str
    endpoint: Endpoint


class ReplicaClient:
    def __init__(self, *, max_attempts: int = 3, timeout_seconds: float = 60.0, connections: int = 256) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[str, int] = {}
        self._turn = itertools.count()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def in_flight(self, endpoint: Endpoint) -> int:
        return self._in_flight.get(endpoint.key, 0)

    def order(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Replicas to try, best first: fewest in flight, then round-robin among equals."""
        start = next(self._turn) % len(endpoints) if endpoints else 0
        rotated = [*endpoints[start:], *endpoints[:start]]
        return sorted(rotated, key=self.in_flight)  # stable: equal loads keep the rotation

    async def send(
        self,
        endpoints: Sequence[Endpoint],
        *,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        what: str,
    ) -> ReplicaAnswer:
        """``method path`` on one of ``endpoints`` (tried in :meth:`order`). Raises InferenceError(503) when
        there are none, or (502) when every attempt failed, naming the replicas and their failures."""
        if not endpoints:
            raise InferenceError(503, f"{what} has no available replica")
        forwarded = {k: v for k, v in headers.items() if k.lower() in FORWARDED_REQUEST_HEADERS}
        if body is not None:
            # Bodies are V2 JSON whatever the caller's transport was (a gRPC caller says application/grpc).
            forwarded["Content-Type"] = "application/json"
        failures: list[str] = []
        last: ReplicaAnswer | None = None
        for endpoint in self.order(endpoints)[: self.max_attempts]:
            self._in_flight[endpoint.key] = self._in_flight.get(endpoint.key, 0) + 1
            try:
                async with self._client().request(
                    method, endpoint.http_url.rstrip("/") + path, data=body, headers=forwarded
                ) as response:
                    answer = ReplicaAnswer(
                        response.status,
                        await response.read(),
                        response.headers.get("content-type", "application/json"),
                        endpoint,
                    )
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                failures.append(f"{endpoint.key}: {type(error).__name__}: {error}".rstrip(": "))
                continue
            finally:
                self._in_flight[endpoint.key] -= 1
                if not self._in_flight[endpoint.key]:
                    del self._in_flight[endpoint.key]
            if answer.status not in RETRYABLE_STATUSES:
                return answer
            last = answer
            failures.append(f"{endpoint.key}: HTTP {answer.status} {_excerpt(answer.body)}")
        if last is not None and all(": HTTP 404 " in failure for failure in failures):
            # Every replica said the model is not there: it is moving, and the new route is on its way.
            raise InferenceError(
                503, f"{what} is not on the replicas routed to; it may be moving ({'; '.join(failures)})"
            )
        raise InferenceError(502, f"{what}: every replica tried failed ({'; '.join(failures)})")


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", errors="replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
