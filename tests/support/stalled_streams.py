"""gRPC server-streaming calls made over raw HTTP/2 (the h2 library) by a client that reads nothing.

The client announces a flow-control window of 0 bytes for its streams, so the server cannot send a single
byte of a response: every message the server writes stays pending, as for a client process that is stuck
or that never calls read. The connection itself stays healthy (PINGs are answered, frames are received),
so nothing but the server's own lag rule can end such a stream. ``read_to_end`` then opens the window and
reads whatever the server still sends, up to the call's final status.

Loopback only: plaintext HTTP/2 (h2c) to a server under test on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from dataclasses import dataclass, field

from google.protobuf.message import Message
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes, Settings

WINDOW_WHEN_READING = 1 << 24


@dataclass
class CallEnd:
    """How a call ended: its gRPC status and message, and how many response messages came before it."""

    status: int | None
    message: str
    messages: int
    reset: bool = False


@dataclass
class StalledCall:
    """One call on its own connection; ``open`` starts it, and from then on nothing is read."""

    address: str  # host:port
    path: str  # /package.Service/Method
    request: Message
    _connection: H2Connection = field(init=False)
    _writer: asyncio.StreamWriter | None = field(default=None, init=False)
    _pump: asyncio.Task[None] | None = field(default=None, init=False)
    _stream_id: int = field(default=0, init=False)
    _headers: dict[str, str] = field(default_factory=dict, init=False)
    _body: bytearray = field(default_factory=bytearray, init=False)
    _ended: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _reset: bool = field(default=False, init=False)

    async def open(self) -> None:
        host, _, port = self.address.rpartition(":")
        reader, self._writer = await asyncio.open_connection(host, int(port))
        self._connection = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        # Sent in the connection's first SETTINGS frame: the server may send no DATA on any stream.
        self._connection.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: 0,
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        self._connection.initiate_connection()
        self._stream_id = self._connection.get_next_available_stream_id()
        self._connection.send_headers(
            self._stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", self.path),
                (":authority", self.address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        payload = self.request.SerializeToString()
        self._connection.send_data(self._stream_id, b"\0" + len(payload).to_bytes(4, "big") + payload, end_stream=True)
        await self._flush()
        self._pump = asyncio.create_task(self._receive(reader), name=f"stalled {self.path}")

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def read_to_end(self, timeout: float = 60) -> CallEnd:
        """Start reading: open the window, take every message the server still sends, until the status."""
        if not self._ended.is_set():
            self._connection.increment_flow_control_window(WINDOW_WHEN_READING, stream_id=self._stream_id)
            self._connection.increment_flow_control_window(WINDOW_WHEN_READING)
            await self._flush()
        await asyncio.wait_for(self._ended.wait(), timeout)
        status = self._headers.get("grpc-status")
        return CallEnd(
            status=int(status) if status is not None else None,
            message=urllib.parse.unquote(self._headers.get("grpc-message", "")),
            messages=_count_messages(bytes(self._body)),
            reset=self._reset,
        )

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def _flush(self) -> None:
        assert self._writer is not None
        data = self._connection.data_to_send()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                for event in self._connection.receive_data(data):
                    self._handle(event)
                await self._flush()  # PING and SETTINGS acknowledgements, window updates while reading
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._ended.set()

    def _handle(self, event: object) -> None:
        if isinstance(event, ResponseReceived | TrailersReceived):
            self._headers.update((str(k), str(v)) for k, v in event.headers or [])
        elif isinstance(event, DataReceived):
            self._body += event.data or b""
            self._connection.acknowledge_received_data(event.flow_controlled_length, self._stream_id)
        elif isinstance(event, StreamReset):
            self._reset = True
            self._ended.set()
        elif isinstance(event, StreamEnded | ConnectionTerminated):
            self._ended.set()


def _count_messages(body: bytes) -> int:
    """Length-prefixed gRPC messages in a response body."""
    count, offset = 0, 0
    while offset + 5 <= len(body):
        offset += 5 + int.from_bytes(body[offset + 1 : offset + 5], "big")
        count += 1
    return count
