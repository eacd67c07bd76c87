"""gzip responses of `min_bytes` or more for clients that accept it.

Berth's answers are single bodies with a Content-Length (JSON, or OIP JSON plus binary tensors),
so compression happens once per response: on the event loop when small, in a thread when large
(zlib releases the GIL). Streamed responses, responses already encoded, and clients that do not
send `Accept-Encoding: gzip` pass through untouched, at the cost of one header scan.
"""

from __future__ import annotations

import zlib

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMPRESS_INLINE_BYTES = 256 * 1024
"""Responses up to this size are compressed on the event loop (a thread hop costs more)."""
LEVEL = 5
"""zlib level: most of level 9's ratio on JSON at a fraction of its time."""


class CompressionMiddleware:
    def __init__(self, app: ASGIApp, min_bytes: int) -> None:
        self.app = app
        self.min_bytes = min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.min_bytes <= 0 or not _accepts_gzip(scope):
            await self.app(scope, receive, send)
            return
        start: Message | None = None

        async def compressing(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message  # held until the body shows whether it is worth compressing
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            held, start = start, None
            body = message.get("body", b"")
            if message.get("more_body", False) or not self._worth_it(held, body):
                await send(held)
                await send(message)
                return
            compressed = await _gzip(body)
            await send({**held, "headers": _compressed_headers(held, len(compressed))})
            await send({"type": "http.response.body", "body": compressed})

        await self.app(scope, receive, compressing)
        if start is not None:  # a response start with no body message: pass it on as it was
            await send(start)

    def _worth_it(self, start: Message, body: bytes) -> bool:
        if len(body) < self.min_bytes:
            return False
        return all(name != b"content-encoding" for name, _value in start.get("headers", []))


async def _gzip(body: bytes) -> bytes:
    if len(body) <= COMPRESS_INLINE_BYTES:
        return _compress(body)
    return await anyio.to_thread.run_sync(_compress, body)


def _compress(body: bytes) -> bytes:
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


def _accepts_gzip(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            return _gzip_allowed(value)
    return False


def _gzip_allowed(value: bytes) -> bool:
    """Whether an Accept-Encoding value admits gzip (a `q=0` weight refuses it)."""
    for item in value.lower().split(b","):
        coding, *params = (part.strip() for part in item.split(b";"))
        if coding in (b"gzip", b"x-gzip", b"*"):
            return _weight(params) > 0
    return False


def _weight(params: list[bytes]) -> float:
    for param in params:
        key, _, number = param.partition(b"=")
        if key.strip() == b"q":
            try:
                return float(number)
            except ValueError:
                return 0.0
    return 1.0


def _compressed_headers(start: Message, length: int) -> list[tuple[bytes, bytes]]:
    headers = [
        (name, value)
        for name, value in start.get("headers", [])
        if name not in (b"content-length", b"vary")
    ]
    vary = [value for name, value in start.get("headers", []) if name == b"vary"]
    headers.append((b"content-length", str(length).encode()))
    headers.append((b"content-encoding", b"gzip"))
    headers.append((b"vary", b", ".join([*vary, b"Accept-Encoding"])))
    return headers
