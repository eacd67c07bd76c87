"""A small HTTP/1.1 client over asyncio streams, for a load generator.

The client usually shares the machine with the server it measures, so it is small on purpose:
one keep-alive connection per worker, the request encoded to bytes once, responses parsed with a
few `bytes.find` calls. Transport failures are raised as they come; `error_kind` names them so a
caller can count them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from berth import __version__
from berth.errors import InvalidInput

USER_AGENT = f"berth-bench/{__version__}"


class ProtocolError(Exception):
    """The peer's bytes are not an HTTP/1.x response."""


class ConnectionClosed(ConnectionError):
    """The server closed the connection before sending any byte of the response."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class HttpRequest:
    """One request, sent again and again. The API key is kept apart from the other headers
    so that nothing written from a request (a locustfile, a repr) can carry it by accident."""

    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    api_key: str | None = field(default=None, repr=False)
    verify_tls: bool = True

    def __post_init__(self) -> None:
        self.encode()  # refuse a bad URL or header now, not in the middle of a run

    @property
    def origin(self) -> str:
        return f"{urlsplit(self.url).scheme}://{self._authority()}"

    @property
    def target(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def endpoint(self) -> Endpoint:
        secure, host, port = self._address()
        return Endpoint(host, port, _tls_context(self.verify_tls) if secure else None)

    def _address(self) -> tuple[bool, str, int]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(
                f"'{self.url}' is not an http(s) URL; write e.g. http://127.0.0.1:8321/health"
            )
        if parts.username is not None:
            raise InvalidInput("credentials in the URL are not sent; remove them, use --api-key")
        secure = parts.scheme == "https"
        try:
            return secure, parts.hostname, parts.port or (443 if secure else 80)
        except ValueError as exc:
            raise InvalidInput(f"'{self.url}' has an invalid port: {exc}") from exc

    def _authority(self) -> str:
        secure, host, port = self._address()
        host = f"[{host}]" if ":" in host else host
        return host if port == (443 if secure else 80) else f"{host}:{port}"

    def encode(self) -> bytes:
        """The request as bytes on the wire, ready to be written as is."""
        lines = [
            f"{self.method} {self.target} HTTP/1.1",
            f"Host: {self._authority()}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        if self.api_key:
            lines.append(f"X-API-Key: {self.api_key}")
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        if any("\r" in line or "\n" in line for line in lines):
            raise InvalidInput("a header, the API key or the URL contains a line break")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                "the URL, a header or the API key is not ASCII; percent-encode the URL"
            ) from exc
        return head + self.body


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    keep_alive: bool


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one HTTP/1.x response: Content-Length, chunked or read-to-close bodies.

    Interim 1xx responses are skipped. Raises `ConnectionClosed` if the stream ends before
    the first byte, `asyncio.IncompleteReadError` if it ends in the middle, `ProtocolError`
    for bytes that are not HTTP.
    """
    while True:
        head = await _read_head(reader)
        status = _status(head)
        if status >= 200:
            break
    lower = head.lower()
    keep_alive = _keep_alive(head, _header(lower, b"connection"))
    if status in (204, 304):
        return Response(status, b"", keep_alive)
    encoding = _header(lower, b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding:
        return Response(status, await _read_chunked(reader), keep_alive)
    length = _header(lower, b"content-length")
    if length is None:  # the body runs to the end of the connection
        return Response(status, await reader.read(), False)
    if not length.isdigit():
        raise ProtocolError(f"invalid Content-Length {length!r}")
    return Response(status, await reader.readexactly(int(length)), keep_alive)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ConnectionClosed("the server closed the connection") from None
        raise


def _status(head: bytes) -> int:
    if not head.startswith(b"HTTP/1.") or head[12:13] not in (b" ", b"\r"):
        raise ProtocolError(f"not an HTTP/1.x response: {head[:40]!r}")
    digits = head[9:12]
    if not digits.isdigit():
        raise ProtocolError(f"invalid status line: {head[:40]!r}")
    return int(digits)


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of a header (lower-cased), from the lower-cased response head."""
    start = lower_head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    return lower_head[start : lower_head.find(b"\r\n", start)].strip()


def _keep_alive(head: bytes, connection: bytes | None) -> bool:
    if head.startswith(b"HTTP/1.0"):
        return connection == b"keep-alive"
    return connection != b"close"


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError(f"invalid chunk size line {line[:40]!r}") from None
        if size == 0:
            break
        parts.append((await reader.readexactly(size + 2))[:-2])
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass  # trailer fields: nothing here needs them
    return b"".join(parts)


class Connection:
    """One keep-alive connection, opened on first use and again after the server closes it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, payload: bytes) -> Response:
        if self._writer is None:
            await self._open()
            return await self._send(payload)
        try:
            return await self._send(payload)
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            # A server may close an idle keep-alive connection just as it is reused. That race
            # is the client's, not a server failure: retry once on a fresh connection.
            await self._open()
            return await self._send(payload)

    async def _open(self) -> None:
        endpoint = self._endpoint
        self._reader, self._writer = await asyncio.open_connection(
            endpoint.host,
            endpoint.port,
            ssl=endpoint.tls,
            server_hostname=endpoint.host if endpoint.tls else None,
        )

    async def _send(self, payload: bytes) -> Response:
        assert self._reader is not None
        assert self._writer is not None
        try:
            self._writer.write(payload)
            if self._writer.transport.get_write_buffer_size():
                await self._writer.drain()  # only large bodies do not fit the socket at once
            response = await read_response(self._reader)
        except BaseException:
            self.close()  # after an error or a timeout the stream's position is unknown
            raise
        if not response.keep_alive:
            self.close()
        return response

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


TRANSPORT_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, ProtocolError)
"""What a request can raise besides a response; a load test counts every one, none ends it."""

_ERROR_KINDS: tuple[tuple[str, type[BaseException] | tuple[type[BaseException], ...]], ...] = (
    ("timeout", TimeoutError),
    ("connection_refused", ConnectionRefusedError),
    ("connection_reset", (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)),
    ("connection_closed", (ConnectionClosed, asyncio.IncompleteReadError)),
    ("tls", ssl.SSLError),
    ("dns", socket.gaierror),
    ("protocol", (ProtocolError, asyncio.LimitOverrunError)),
    ("network", OSError),
)


def error_kind(exc: BaseException) -> str:
    """The name a transport failure is counted under (the most specific that fits)."""
    for kind, types in _ERROR_KINDS:
        if isinstance(exc, types):
            return kind
    return type(exc).__name__
