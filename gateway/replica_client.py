"""Sending one V2 REST request to a model's replicas: load-balanced, with a bounded retry elsewhere, and
passive ejection of replicas that are down.

Balancing: the replica with the fewest requests in flight from this gateway, ties broken round-robin,
so a slow replica gets less work without any coordination between gateways.

Answers (modelplane.inference_errors reads every non-2xx one):

* 2xx: the answer.
* A request the replica found invalid (4xx; MLServer's traceback of a ValueError or TypeError; Triton's
  "Unable to parse"): the caller's mistake, answered at once with the replica's status and one short line
  of its reason, never retried: another replica of the same model would say the same.
* A request that took too long (no answer within ``timeout_seconds``, or the replica's 504: its server
  did not answer in time): answered 504 at once, never retried: the request is what is slow, and trying it
  on every replica would cost each of them as much.
* The model is not on the replica (404: it moved, and the routing update has not arrived yet), the replica
  cannot answer now (no connection, 408, 429, 502, 503), or its server failed on the request (other 5xx):
  the request goes to another replica, at most ``max_attempts`` replicas in all. Retrying is safe:
  inference requests have no side effects.

Passive ejection: a replica is skipped for :data:`EJECT_SECONDS` seconds, doubled after each further
ejection in a row up to :data:`MAX_EJECT_SECONDS`, while the model has other replicas, for exactly two
reasons: no connection could be made to it (refused, reset, or not made within the connect timeout), or it
answered with the ``modelplane.inference_errors.SERVER_DOWN_HEADER`` mark, which the agent's proxy puts
on its answers while its inference server is down or cannot be reached. Between a server dying and the
scheduler's route update, requests do not keep paying for the dead one. Nothing else ejects a replica:
not a 503 for one model (the proxy could not load it again, or has no room for it: the replica's other
models still answer), not 502, 504, 429 or any other status, not a timeout. Skipped replicas are still
tried last, so a request still goes to a model's only replica, and the first request after the period
tests the replica again; any unmarked answer from it ends the ejection.

What a server says beyond that line (a traceback, file paths) is logged here, bounded, never answered.

Identity: the gateway's own token (``token``, its --agent-token-file) goes with every request as
``authorization: Bearer``, for agents that check their callers (--auth-inference); the caller's own
``authorization`` never passes (only tracing headers do). An agent that refuses the gateway's credential (401,
403) is this gateway's failure, not the caller's: 502, tried on other replicas, and logged with the agent's reason.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.inference_types import InferenceError
from gateway.routing_table import Endpoint
from modelplane import tracing
from modelplane.auth.client_token import ClientToken
from modelplane.http_hop import (
    AnswerTimeoutError,
    BadAnswerError,
    BrokenConnectionError,
    ConnectError,
    HopClient,
    request_target,
)
from modelplane.inference_errors import (
    SERVER_DOWN_HEADER,
    ErrorAnswer,
    ErrorBody,
    Verdict,
    read_error_answer,
    safe_reason,
)

log = logging.getLogger(__name__)

FORWARDED_REQUEST_HEADERS = ("x-request-id", "seldon-request-id", "traceparent", "tracestate")
MAX_FORWARDED_HEADER_CHARS: Final = 1024
EJECT_SECONDS: Final = 1.0
MAX_EJECT_SECONDS: Final = 30.0
# A connection not made within this is a replica that cannot be reached (ejected), not a slow request.
CONNECT_TIMEOUT_SECONDS: Final = 10.0
# Header values travel as given, so they must be what HTTP allows in one: visible ASCII, spaces, tabs.
_HEADER_VALUE: Final = re.compile(r"[\t\x20-\x7e]*")
_SERVER_DOWN: Final = SERVER_DOWN_HEADER.lower()


@dataclass(frozen=True, slots=True)
class ReplicaAnswer:
    status: int
    body: bytes
    content_type: str
    endpoint: Endpoint


@dataclass(slots=True)
class _Ejection:
    until: float  # skipped until then (time.monotonic)
    failures: int  # in a row


class ReplicaClient:
    def __init__(
        self,
        *,
        max_attempts: int = 3,
        timeout_seconds: float = 60.0,
        connections: int = 256,
        clock: Callable[[], float] = time.monotonic,
        on_eject: Callable[[Endpoint, float, str], None] | None = None,
        token: ClientToken | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.timeout_seconds = timeout_seconds
        self._hop = HopClient(
            connections=connections, total_timeout=timeout_seconds, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        self._in_flight: dict[str, int] = {}
        self._turn = itertools.count()
        self._clock = clock
        self._on_eject = on_eject
        self._token = token  # presented to the replicas' proxies; read at each request (its file may rotate)
        self._ejected: dict[str, _Ejection] = {}  # by the replica's URL: it is the address that fails

    async def close(self) -> None:
        await self._hop.close()

    def in_flight(self, endpoint: Endpoint) -> int:
        return self._in_flight.get(endpoint.key, 0)

    def ejected(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is being skipped now."""
        ejection = self._ejected.get(endpoint.http_url)
        return ejection is not None and ejection.until > self._clock()

    def order(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Replicas to try, best first: those not ejected by fewest in flight, then round-robin among equals;
        then the ejected ones, soonest back first."""
        start = next(self._turn) % len(endpoints) if endpoints else 0
        rotated = [*endpoints[start:], *endpoints[:start]]
        healthy = [endpoint for endpoint in rotated if not self.ejected(endpoint)]
        skipped = sorted((e for e in rotated if self.ejected(e)), key=lambda e: self._ejected[e.http_url].until)
        return sorted(healthy, key=self.in_flight) + skipped  # stable: equal loads keep the rotation

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
        """``method path`` on one of ``endpoints`` (tried in :meth:`order`): the first 2xx answer. Raises
        InferenceError: 503 when there are none or none could answer now, the replica's 4xx when it found the
        request invalid, 504 when it took too long, 502 when the servers failed; each with a short reason
        naming the replicas."""
        if not endpoints:
            raise InferenceError(503, f"{what} has no available replica")
        forwarded = forwarded_headers(headers)
        if body is not None:
            # Bodies are V2 JSON whatever the caller's transport was (a gRPC caller says application/grpc).
            forwarded["Content-Type"] = "application/json"
        if self._token is not None:
            forwarded["Authorization"] = f"Bearer {self._token.current()}"
        span = tracing.start_hop("gateway", method, path, forwarded)  # None unless tracing is on
        if span is None:
            return await self._attempts(endpoints, method=method, path=path, body=body, forwarded=forwarded, what=what)
        status: int | None = None
        try:
            answer = await self._attempts(
                endpoints, method=method, path=path, body=body, forwarded=forwarded, what=what
            )
            status = answer.status
            return answer
        except InferenceError as error:
            status = error.status
            raise
        finally:
            tracing.end_hop(span, status)

    async def _attempts(
        self,
        endpoints: Sequence[Endpoint],
        *,
        method: str,
        path: str,
        body: bytes | None,
        forwarded: dict[str, str],
        what: str,
    ) -> ReplicaAnswer:
        failures: list[tuple[Endpoint, ErrorAnswer]] = []
        for endpoint in self.order(endpoints)[: self.max_attempts]:
            answer = await self._try(endpoint, method, path, body, forwarded)
            if isinstance(answer, ReplicaAnswer):
                return answer
            if answer.verdict is Verdict.INVALID:
                log.debug("%s on %s: invalid request (HTTP %d): %s", what, endpoint.key, answer.status, answer.detail)
                raise InferenceError(answer.status, f"{what}: {answer.reason}")
            failures.append((endpoint, answer))
            if answer.verdict is Verdict.TIMED_OUT:
                raise InferenceError(504, f"{what}: {_said(failures)}")
        said = _said(failures)
        verdicts = {answer.verdict for _, answer in failures}
        if verdicts == {Verdict.NOT_HERE}:
            # Every replica said the model is not there: it is moving, and the new route is on its way.
            raise InferenceError(503, f"{what} is not on the replicas routed to; it may be moving ({said})")
        if Verdict.FAILED not in verdicts:
            raise InferenceError(503, f"{what}: no replica could answer now ({said})")
        raise InferenceError(502, f"{what}: every replica tried failed ({said})")

    async def _try(
        self, endpoint: Endpoint, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> ReplicaAnswer | ErrorAnswer:
        """One attempt: the 2xx answer, or what went wrong (recorded for ejection and logged)."""
        self._in_flight[endpoint.key] = self._in_flight.get(endpoint.key, 0) + 1
        try:
            answer = await self._hop.request(
                method, endpoint.http_url, request_target(path), headers=dict(headers), body=body or b""
            )
        except AnswerTimeoutError:  # connected, then no whole answer in time
            reason = f"did not answer within {self.timeout_seconds:g}s"
            error, server_down = ErrorAnswer(Verdict.TIMED_OUT, 504, reason, reason), False
        except (ConnectError, BrokenConnectionError) as failure:  # refused, not made in time, reset, closed
            error, server_down = _unreachable(failure), True
        except BadAnswerError as failure:  # connected, but its answer could not be read
            text = _failure_text(failure)
            error, server_down = ErrorAnswer(Verdict.FAILED, 502, f"its answer could not be read ({text})", text), False
        except ValueError as failure:  # an address from the routing table that is no http:// URL
            text = _failure_text(failure)
            error, server_down = ErrorAnswer(Verdict.FAILED, 502, f"its address cannot be used ({text})", text), False
        else:
            if 200 <= answer.status < 300:
                self._ejected.pop(endpoint.http_url, None)
                log.debug("%s %s answered %d by replica %s", method, path, answer.status, endpoint.key)
                content_type = answer.headers.get("content-type", "application/json")
                return ReplicaAnswer(answer.status, answer.body, content_type, endpoint)
            server_down = _SERVER_DOWN in answer.headers
            error = read_error_answer(answer.status, answer.error_body or ErrorBody())
        finally:
            self._in_flight[endpoint.key] -= 1
            if not self._in_flight[endpoint.key]:
                del self._in_flight[endpoint.key]
        if error.verdict is Verdict.TIMED_OUT:
            log.warning("replica %s: %s %s %s", endpoint.key, method, path, error.reason)
        elif server_down:
            self._eject(endpoint, error.reason)
        else:
            self._ejected.pop(endpoint.http_url, None)  # it answered, unmarked: it is up
            if error.verdict is Verdict.FAILED:
                log.warning("replica %s failed on %s %s: %s", endpoint.key, method, path, error.detail)
        return error

    def _eject(self, endpoint: Endpoint, reason: str) -> None:
        now = self._clock()
        # Forget replicas quiet for a while (they left the table, or recovered): the map stays small.
        for url in [url for url, e in self._ejected.items() if e.until < now - MAX_EJECT_SECONDS]:
            del self._ejected[url]
        ejection = self._ejected.get(endpoint.http_url)
        if ejection is not None and ejection.until > now:
            return  # already skipped (requests that were in flight when it failed)
        failures = 1 if ejection is None else ejection.failures + 1
        seconds = min(MAX_EJECT_SECONDS, EJECT_SECONDS * 2 ** min(failures - 1, 16))
        self._ejected[endpoint.http_url] = _Ejection(now + seconds, failures)
        log.warning("replica %s (%s) skipped for %gs: %s", endpoint.key, endpoint.http_url, seconds, reason)
        if self._on_eject is not None:
            self._on_eject(endpoint, seconds, reason)


def _failure_text(failure: BaseException) -> str:
    return safe_reason(f"{type(failure).__name__}: {failure}".rstrip(": "))


def _unreachable(failure: BaseException) -> ErrorAnswer:
    text = _failure_text(failure)
    return ErrorAnswer(Verdict.UNAVAILABLE, 503, f"unreachable ({text})", text)


def _said(failures: Sequence[tuple[Endpoint, ErrorAnswer]]) -> str:
    return "; ".join(f"{endpoint.key}: {answer.reason}" for endpoint, answer in failures)


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers a replica gets: tracing and request ids only, and only values HTTP can carry."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower() in FORWARDED_REQUEST_HEADERS
        and len(value) <= MAX_FORWARDED_HEADER_CHARS
        and _HEADER_VALUE.fullmatch(value)
    }
