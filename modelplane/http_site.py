"""Serving an aiohttp application on one address, as the gateway's REST edge, the agent's inference proxy and the
controller's health listener do: bound before anything is announced, a port in use a clear error."""

from __future__ import annotations

import ssl

from aiohttp import web

from modelplane.addresses import Address
from modelplane.transport import TransportError


async def serve_runner(runner: web.AppRunner, address: Address, ssl_context: ssl.SSLContext | None = None) -> Address:
    """Set ``runner`` up and serve it on ``address`` (port 0: the kernel picks one); the address bound. An address
    that cannot be bound is a TransportError naming it, and the runner is cleaned up."""
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise TransportError(f"cannot listen on {address}: {error.strerror}") from None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return Address(address.host, port)
