"""The controller's one gRPC channel to the scheduler's API, with the TLS and bearer token of its flags.

A gRPC channel reconnects by itself when the scheduler goes away and comes back: unary calls made meanwhile
fail with UNAVAILABLE (and are retried by their reconciler), streams end (and are opened again by their follower).
"""

from __future__ import annotations

from pathlib import Path

from grpc import aio

from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.auth_flags import client_token
from modelplane.transport import TransportSecurity, open_channel


class SchedulerConnection:
    """Raises TransportError (from ``__init__``) for TLS files or a token file that cannot be used."""

    def __init__(self, address: Address, security: TransportSecurity, token_file: Path | None = None) -> None:
        self.address = address
        self._channel: aio.Channel = open_channel(address, security, client_token(token_file))
        self.stub = pb_grpc.SchedulerStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()
