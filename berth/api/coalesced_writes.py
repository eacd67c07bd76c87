"""uvicorn's HTTP protocol, writing a response's head and its body to the socket in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the
body in a second write. A replica killed between the two (SIGKILL, the OOM killer, a node
failing) leaves a proxy holding a complete head and no body: nginx has already started the
client's response by then, so it cannot retry the request on another replica, and the client
sees its connection closed mid-response. Under CPU load the process can be descheduled between
the two writes, which makes this likely enough to show in a kill test.

`CoalescingTransport` holds a write that is a response head alone until the next write (the
body, sent in the same event-loop step by every non-streaming response) and sends both at once;
if nothing follows in this loop step (a streaming response waiting for its first chunk), the
head goes out on the next step. Everything else passes through unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/"
_HEAD_END = b"\r\n\r\n"


class CoalescingTransport:
    """An asyncio transport that sends a response head together with what follows it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            data = self._held + bytes(data)
            self._held = b""
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
        elif bytes(data[:5]) == _HEAD_START and bytes(data[-4:]) == _HEAD_END:
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _flush(self) -> None:
        self._flush_handle = None
        if self._held:
            held, self._held = self._held, b""
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held)

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, flow control, abort) is the real transport's.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they write the same way.
        real = cast(asyncio.Transport, transport)
        super().connection_made(
            cast(asyncio.Transport, CoalescingTransport(real, asyncio.get_running_loop()))
        )
