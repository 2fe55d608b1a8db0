"""uvicorn's httptools protocol, writing each response with one system call instead of two.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`,
and the body when it sends `http.response.body`: two `send` calls on the socket, two TCP segments,
and often two wake-ups of the client, for every answer. At a thousand small answers a second on two
cores that is a measurable share of the CPU. Here the transport uvicorn writes to holds a write back
until the next one, and sends the two together; whatever is still held when the current pass of the
event loop ends (a response without a body, a `100 Continue`, the last chunk of a stream) is sent
then. Order is kept, and nothing is held across a close.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _JoiningTransport:
    """A transport that sends a write together with the one after it (see the module docstring)."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.writelines((held, data))

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():  # gone meanwhile: nobody to send it to (as asyncio's writes)
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class JoinedWritesProtocol(HttpToolsProtocol):
    """HttpToolsProtocol over a `_JoiningTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_JoiningTransport(transport, self.loop))
