"""Receive every request body whole, in bounded time and size, before the app sees the request.

One place answers every way a body can go wrong, for every route:

- larger than `max_bytes` (by Content-Length, or counted as chunks arrive): 413;
- not received within `timeout_seconds` (a client trickling bytes): 408, and the connection is
  closed, so it cannot go on holding it;
- the client leaves mid-body: nothing to answer; logged at debug and counted, never an error;
- `Content-Encoding: gzip` or `deflate`: decompressed with the output bounded by `max_bytes` (a
  zip bomb gets 413), in a thread when large (zlib releases the GIL); another encoding: 415.

Because this middleware sits outside the load shedder, a request holds a prediction slot only
once its body is here: slow senders wait on their own connections, not in the server's capacity.
The app then receives the body as one message and the request's headers without
Content-Encoding.

Requests for which `streamed(scope)` is true (model uploads, up to gigabytes) pass untouched:
their route streams the body to disk under limits of its own.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable

import anyio.to_thread
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api.middleware.asgi import send_error

log = logging.getLogger("berth.api")

BODY_FAILURES = Counter(
    "berth_request_body_failures",
    "Request bodies not handed to the app, by reason: too_large, timeout, disconnect, "
    "unsupported_encoding, corrupt_encoding.",
    ["reason"],
)

DECOMPRESS_INLINE_BYTES = 64 * 1024
"""Compressed bodies up to this size are inflated on the event loop (a thread hop costs more)."""

_DECODERS = {
    b"gzip": 16 + zlib.MAX_WBITS,
    b"x-gzip": 16 + zlib.MAX_WBITS,
    b"deflate": zlib.MAX_WBITS,
}
_IDENTITY = frozenset({b"", b"identity"})


class BodyTooLarge(Exception):
    pass


class CorruptEncoding(Exception):
    pass


class RequestBodyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_seconds: float,
        streamed: Callable[[Scope], bool],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope) or self.streamed(scope):
            await self.app(scope, receive, send)
            return
        encoding = _header(scope, b"content-encoding").strip().lower()
        if encoding not in _IDENTITY and encoding not in _DECODERS:
            await self._fail(send, "unsupported_encoding", 415, _unsupported(encoding))
            return
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._fail(send, "too_large", 413, self._too_large())
            return
        try:
            async with asyncio.timeout(self.timeout_seconds):
                body = await self._read(receive)
        except TimeoutError:
            await self._fail(
                send,
                "timeout",
                408,
                f"the request body did not arrive within {self.timeout_seconds:g} s; send it "
                "faster (or raise BERTH_BODY_TIMEOUT_SECONDS)",
                [(b"connection", b"close")],
            )
            return
        except BodyTooLarge:
            await self._fail(send, "too_large", 413, self._too_large())
            return
        if body is None:
            BODY_FAILURES.labels("disconnect").inc()
            log.debug("client disconnected before sending the whole request body")
            return
        if encoding not in _IDENTITY:
            try:
                body = await self._inflate(body, _wbits(encoding, body))
            except BodyTooLarge:
                await self._fail(send, "too_large", 413, self._too_large(decompressed=True))
                return
            except CorruptEncoding as exc:
                await self._fail(send, "corrupt_encoding", 400, str(exc))
                return
            scope = _without_encoding(scope, len(body))
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None when the client disconnected first."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _inflate(self, body: bytes, wbits: int) -> bytes:
        if len(body) <= DECOMPRESS_INLINE_BYTES:
            return _inflate(body, wbits, self.max_bytes)
        return await anyio.to_thread.run_sync(_inflate, body, wbits, self.max_bytes)

    def _too_large(self, decompressed: bool = False) -> str:
        what = "decompressed request body" if decompressed else "request body"
        return (
            f"{what} is larger than the limit of {self.max_bytes} bytes; "
            "send fewer rows per request (or raise BERTH_MAX_BODY_BYTES)"
        )

    @staticmethod
    async def _fail(
        send: Send,
        reason: str,
        status: int,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        BODY_FAILURES.labels(reason).inc()
        await send_error(send, status, message, headers)


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    """Decompress `body`, refusing (BodyTooLarge) as soon as the output passes `limit` bytes.

    A gzip body may hold several members one after the other (RFC 1952); each is inflated.
    """
    parts: list[bytes] = []
    produced = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(rest, limit - produced + 1)
        except zlib.error as exc:
            kind = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
            raise CorruptEncoding(
                f"the request body is not valid {kind} data ({exc}); send it compressed as "
                "its Content-Encoding says, or uncompressed"
            ) from None
        produced += len(part)
        if produced > limit:
            raise BodyTooLarge
        if not inflater.eof:
            raise CorruptEncoding(
                "the compressed request body ends early; send the whole compressed stream"
            )
        parts.append(part)
        rest = inflater.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _wbits(encoding: bytes, body: bytes) -> int:
    """zlib's window bits for the body: `deflate` is meant to be zlib-wrapped (RFC 9110), but
    some clients send a raw deflate stream; a zlib header tells them apart."""
    wbits = _DECODERS[encoding]
    if encoding == b"deflate" and not _zlib_header(body):
        return -zlib.MAX_WBITS
    return wbits


def _zlib_header(body: bytes) -> bool:
    return len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] * 256 + body[1]) % 31 == 0


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bool(value != b"0")
        if name == b"transfer-encoding":
            return True
    return False


def _header(scope: Scope, wanted: bytes) -> bytes:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return b""


def _unsupported(encoding: bytes) -> str:
    shown = encoding.decode("latin-1")[:40]
    return (
        f"Content-Encoding '{shown}' is not supported; send the body uncompressed, or "
        "compressed with gzip or deflate"
    )


def _without_encoding(scope: Scope, length: int) -> Scope:
    """The scope as the app should see it: the body is plain now, and this long."""
    headers = [
        (name, value)
        for name, value in scope["headers"]
        if name not in (b"content-encoding", b"content-length", b"transfer-encoding")
    ]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body in one message, then listens for disconnects."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
