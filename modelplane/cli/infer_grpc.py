"""``infer --grpc``: the same request through the gateway's V2 gRPC endpoint (``inference.GRPCInferenceService``).

The JSON request is converted with the gateway's own codec (gateway/edges/v2_grpc_codec.py), so what the command
sends over gRPC is what the gateway would make of the REST body. The gateway serves models, pipelines and
experiments under one ``ModelInfer`` (a pipeline by its name), and names an experiment's route in the answer's
initial metadata (``x-modelplane-route``), which ``--sticky`` reads and sends back as request metadata.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from gateway.edges.v2_grpc_codec import decode_infer_response, encode_infer_request
from gateway.inference_types import InferenceError
from gateway.routing_table import ROUTE_HEADER
from generated.inference.v2 import grpc_predict_v2_pb2 as pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.cli.infer_commands import Answer, InferError
from modelplane.command_line import EXIT_FAILURE, EXIT_USAGE
from modelplane.transport import TransportSecurity, open_channel

# gRPC's own words when no connection could be made (as opposed to the gateway answering UNAVAILABLE).
_NO_CONNECTION = ("failed to connect", "connection refused", "connections to all backends failing", "dns resolution")


@dataclass
class GrpcSender:
    address: Address
    stub: pb_grpc.GRPCInferenceServiceStub
    request: pb.ModelInferRequest
    headers: dict[str, str]
    timeout: float

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        address: Address,
        *,
        security: TransportSecurity,
        token: str | None,
        name: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
    ) -> AsyncIterator[GrpcSender]:
        try:
            request = encode_infer_request(name, None, json.loads(body))
        except InferenceError as error:
            raise InferError(f"--data cannot be sent over gRPC: {error.message}", EXIT_USAGE) from None
        async with open_channel(address, security, token) as channel:
            yield cls(address, pb_grpc.GRPCInferenceServiceStub(channel), request, dict(headers), timeout)

    async def send(self, extra: Mapping[str, str]) -> Answer:
        metadata = tuple({**self.headers, **{key.lower(): value for key, value in extra.items()}}.items())
        # An asyncio channel's call (awaitable, with initial metadata); the generated stub's types say otherwise.
        call: Any = self.stub.ModelInfer(self.request, metadata=metadata, timeout=self.timeout)
        try:
            response = await call
            initial: Any = await call.initial_metadata()
        except aio.AioRpcError as error:
            raise self._refusal(error) from None
        route = next((str(value) for key, value in initial or () if key == ROUTE_HEADER), None)
        try:
            document = decode_infer_response(response)
        except InferenceError as error:
            raise InferError(f"the gateway at {self.address} answered a malformed response: {error.message}") from None
        return Answer(200, "OK", json.dumps(document).encode(), route)

    def _refusal(self, error: aio.AioRpcError) -> InferError:
        details = error.details() or ""
        unreachable = error.code() == grpc.StatusCode.UNAVAILABLE and any(
            words in details.lower() for words in _NO_CONNECTION
        )
        if unreachable:
            return InferError(
                f"cannot reach the gateway's gRPC endpoint at {self.address}: is `modelplane gateway --grpc-listen` "
                f"running there? ({details})"
            )
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return InferError(f"the gateway at {self.address} did not answer within the deadline (--timeout)")
        status = EXIT_USAGE if error.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILURE
        return InferError(f"gateway at {self.address} answered {error.code().name}: {details}", status)
