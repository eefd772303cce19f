"""How large a V2 inference request body may be, for every process that takes one: the gateway's edges (REST
bodies, and the JSON it makes of gRPC and Kafka requests) and the agent's inference proxy behind it. One
number, so that a request the gateway passed on is never refused by the proxy for its size."""

from __future__ import annotations

from typing import Final

MAX_REQUEST_BODY_BYTES: Final = 64 * 1024 * 1024
