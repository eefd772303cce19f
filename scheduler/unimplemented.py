"""Handlers for RPCs that exist on the wire but are not built yet.

Every RPC of the Scheduler API is registered, so a client always gets a gRPC answer; those not built
yet answer UNIMPLEMENTED with a message naming the RPC and the modelplane version, rather than
grpc's anonymous "Method not implemented!".
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from grpc import aio

from modelplane import __version__


def not_built(rpc: str) -> Any:
    """A servicer method for ``rpc`` that answers UNIMPLEMENTED. Typed Any: it stands in for any RPC."""

    async def handler(self: object, request: object, context: aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{rpc} is not implemented yet in modelplane {__version__}",
        )

    handler.__name__ = handler.__qualname__ = rpc
    return handler
