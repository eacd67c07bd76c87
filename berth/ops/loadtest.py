"""A load generator for HTTP endpoints: fixed concurrency (closed loop) or fixed rate (open loop).

The client usually shares the machine with the server it measures, so it is small on purpose:
one HTTP/1.1 keep-alive connection per worker over asyncio streams, the request encoded to bytes
once, responses parsed with a few `bytes.find` calls, and latencies kept in a log-linear
histogram of microseconds (bounded memory, under 0.2 % error).

Use it from Python::

    request = HttpRequest("http://127.0.0.1:8321/health")
    result = run(request, Load(concurrency=16, duration=5))
    print(result.rps, result.latency.p99)

Failures
--------
During a run nothing is raised for the server's sake: HTTP statuses are counted, and transport
failures are counted by kind (`error_kind`). Before a run, `preflight` and `resolve_target` raise
`BerthError`s the user can act on::

    BerthError
    ├── NotFound / Unauthenticated / Forbidden    the server said 404 / 401 / 403
    └── BenchError                                anything else that stops a run from starting
        └── ServerUnreachable                     no HTTP answer at all
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from berth import __version__
from berth.errors import BerthError, Forbidden, InvalidInput, NotFound, Unauthenticated
from berth.registry.references import DEFAULT_ALIAS, Reference, parse_reference

USER_AGENT = f"berth-bench/{__version__}"
T = TypeVar("T")
_clock = time.perf_counter_ns


class BenchError(BerthError):
    """A load test cannot start; the message says what to change."""


class ServerUnreachable(BenchError):
    pass


class ProtocolError(Exception):
    """The peer's bytes are not an HTTP/1.x response."""


class ConnectionClosed(ConnectionError):
    """The server closed the connection before sending any byte of the response."""


# requests and responses ---------------------------------------------------------------------


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
"""What a request can raise besides a response: every one is counted, none ends the run."""

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


async def fetch(request: HttpRequest, timeout: float) -> Response:
    """One request on its own connection; `ServerUnreachable` if no response comes back."""
    connection = Connection(request.endpoint())
    try:
        async with asyncio.timeout(timeout):
            return await connection.exchange(request.encode())
    except TRANSPORT_ERRORS as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc
        raise ServerUnreachable(
            f"cannot reach {request.origin} ({error_kind(exc)}: {reason}); start the server "
            "(`berth serve`) or point --server at it"
        ) from exc
    finally:
        connection.close()


# measurements -------------------------------------------------------------------------------

_SUB_BITS = 10  # 1024 exact buckets below 1.024 ms, then 512 per power of two: < 0.2 % error
_SUB = 1 << _SUB_BITS
_HALF = _SUB >> 1
_SHIFTS = 30
_LARGEST = (1 << (_SUB_BITS + _SHIFTS)) - 1  # about 12 days in microseconds


class Histogram:
    """Latencies in microseconds, log-linear buckets: fixed memory however long the run."""

    __slots__ = ("_counts", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self._counts = [0] * (_SUB + _SHIFTS * _HALF)
        self.count = 0
        self.total = 0
        self.minimum = _LARGEST
        self.maximum = 0

    def record(self, micros: int) -> None:
        micros = min(max(micros, 0), _LARGEST)
        if micros < _SUB:
            index = micros
        else:
            shift = micros.bit_length() - _SUB_BITS
            index = _SUB + (shift - 1) * _HALF + (micros >> shift) - _HALF
        self._counts[index] += 1
        self.count += 1
        self.total += micros
        self.minimum = min(self.minimum, micros)
        self.maximum = max(self.maximum, micros)

    def percentiles(self, quantiles: Sequence[float]) -> list[int]:
        """The value at each quantile (0 to 1), never above the maximum: ordered as asked."""
        if not self.count:
            return []
        cumulative = list(accumulate(self._counts))
        found = []
        for quantile in quantiles:
            rank = max(1, math.ceil(quantile * self.count))
            if rank >= self.count:  # the top rank is known exactly
                found.append(self.maximum)
                continue
            middle = _bucket_middle(bisect_left(cumulative, rank))
            found.append(min(max(middle, self.minimum), self.maximum))
        return found


def _bucket_middle(index: int) -> int:
    if index < _SUB:
        return index
    shift = (index - _SUB) // _HALF + 1
    low = ((index - _SUB) % _HALF + _HALF) << shift
    return low + ((1 << shift) - 1) // 2


class Recorder:
    """Everything counted in one phase of a run."""

    def __init__(self) -> None:
        self.latency = Histogram()
        self.status_codes: dict[int, int] = {}
        self.transport_errors: dict[str, int] = {}
        self.requests = 0
        self.ok = 0
        self.dropped = 0

    def response(self, status: int, micros: int) -> None:
        self.requests += 1
        self.status_codes[status] = self.status_codes.get(status, 0) + 1
        if 200 <= status < 300:
            self.ok += 1
        self.latency.record(micros)

    def failure(self, kind: str) -> None:
        self.requests += 1
        self.transport_errors[kind] = self.transport_errors.get(kind, 0) + 1

    @property
    def errors(self) -> int:
        return self.requests - self.ok


# the load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How hard and for how long to push: for `duration` seconds or `requests` requests."""

    concurrency: int = 8
    """Connections. Without `rate`, each sends its next request when the last one is answered."""

    rate: float | None = None
    """Requests started per second on a fixed schedule (open loop), over `concurrency` connections."""

    duration: float | None = None
    """Seconds of measured load; 10 unless `requests` is given."""

    requests: int | None = None
    """Measured requests to send (with `rate`: to schedule)."""

    warmup: float = 0.0
    """Seconds of load before measuring; their requests are not counted."""

    timeout: float = 10.0
    """Seconds one request may take, connecting included; slower ones count as `timeout`."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InvalidInput("concurrency must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise InvalidInput("rate must be a positive number of requests per second")
        if self.duration is not None and self.requests is not None:
            raise InvalidInput("give a duration or a number of requests, not both")
        if self.duration is not None and not self.duration > 0:
            raise InvalidInput("duration must be positive")
        if self.requests is not None and self.requests < 1:
            raise InvalidInput("requests must be at least 1")
        if self.warmup < 0 or not self.timeout > 0:
            raise InvalidInput("warmup must be zero or more and timeout positive")

    @property
    def mode(self) -> str:
        return "concurrency" if self.rate is None else "rate"

    @property
    def seconds(self) -> float | None:
        """How long the measured phase lasts; None when it is `requests` long."""
        if self.requests is not None:
            return None
        return 10.0 if self.duration is None else self.duration


@dataclass(frozen=True)
class Latency:
    """Milliseconds over every HTTP response (of any status); None when there was none."""

    minimum: float | None = None
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    maximum: float | None = None

    @classmethod
    def of(cls, histogram: Histogram) -> Latency:
        if not histogram.count:
            return cls()
        p50, p90, p99 = (v / 1000 for v in histogram.percentiles((0.5, 0.9, 0.99)))
        mean = histogram.total / histogram.count / 1000
        return cls(histogram.minimum / 1000, mean, p50, p90, p99, histogram.maximum / 1000)

    def to_dict(self) -> dict[str, float | None]:
        values = {
            "min": self.minimum,
            "mean": self.mean,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.maximum,
        }
        return {k: None if v is None else round(v, 3) for k, v in values.items()}


@dataclass(frozen=True)
class Result:
    """What a run measured (warm-up excluded)."""

    url: str
    method: str
    load: Load
    requests: int
    """Requests that ended: answered with any status, or failed in transport."""
    duration: float
    """Seconds from the first measured request to the last answer."""
    ok: int
    """2xx responses."""
    status_codes: dict[int, int]
    transport_errors: dict[str, int]
    dropped: int
    """With a rate: scheduled requests never sent because the cap of waiting ones was reached."""
    latency: Latency
    interrupted: bool = False

    @property
    def errors(self) -> int:
        return self.requests - self.ok

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary with stable keys, as `berth bench --json` prints it."""
        return {
            "target": self.url,
            "method": self.method,
            "mode": self.load.mode,
            "concurrency": self.load.concurrency,
            "rate": self.load.rate,
            "requests": self.requests,
            "duration_s": round(self.duration, 3),
            "rps": round(self.rps, 1),
            "ok": self.ok,
            "errors": self.errors,
            "dropped": self.dropped,
            "status_codes": {str(k): v for k, v in sorted(self.status_codes.items())},
            "transport_errors": dict(sorted(self.transport_errors.items())),
            "latency_ms": self.latency.to_dict(),
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class Progress:
    """A run so far, for a live display."""

    phase: str
    """`warmup`, `measuring` or `done`."""
    elapsed: float
    requests: int
    errors: int
    dropped: int
    status_codes: dict[int, int]
    transport_errors: dict[str, int]
    p50: float | None
    p99: float | None


class _Dispatcher:
    """Hands scheduled start times to idle workers (open loop).

    When every worker is busy, up to `capacity` start times wait for one; their latency still
    counts from the scheduled time, so queueing in the client is not hidden (no coordinated
    omission). A start time beyond that is dropped and counted.
    """

    def __init__(self, capacity: int, recorder: Recorder) -> None:
        self._capacity = capacity
        self._recorder = recorder
        self._idle: deque[asyncio.Future[int | None]] = deque()
        self._waiting: deque[int] = deque()
        self._closed = False

    def offer(self, scheduled: int) -> None:
        while self._idle:
            worker = self._idle.popleft()
            if not worker.done():
                worker.set_result(scheduled)
                return
        if len(self._waiting) < self._capacity:
            self._waiting.append(scheduled)
        else:
            self._recorder.dropped += 1

    async def take(self) -> int | None:
        if self._waiting:
            return self._waiting.popleft()
        if self._closed:
            return None
        worker: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._idle.append(worker)
        return await worker

    def close(self) -> None:
        self._closed = True
        for worker in self._idle:
            if not worker.done():
                worker.set_result(None)
        self._idle.clear()


class LoadTest:
    """One run of `load` against `request`; `progress()` may be read while it runs."""

    def __init__(self, request: HttpRequest, load: Load) -> None:
        self.request = request
        self.load = load
        self._payload = request.encode()
        self._endpoint = request.endpoint()
        self._recorder = Recorder()
        self._phase = "warmup" if load.warmup else "measuring"
        self._phase_start = _clock()
        self._end = 0
        self._remaining: int | None = None
        self._stopped = False
        self._elapsed: float | None = None  # frozen when the run ends

    def stop(self) -> None:
        """End the run early: requests in flight finish, no new ones start."""
        self._stopped = True

    def progress(self) -> Progress:
        recorder = self._recorder
        found = recorder.latency.percentiles((0.5, 0.99))
        p50, p99 = (found[0] / 1000, found[1] / 1000) if found else (None, None)
        return Progress(
            phase=self._phase,
            elapsed=self._elapsed or (_clock() - self._phase_start) / 1e9,
            requests=recorder.requests,
            errors=recorder.errors,
            dropped=recorder.dropped,
            status_codes=dict(recorder.status_codes),
            transport_errors=dict(recorder.transport_errors),
            p50=p50,
            p99=p99,
        )

    async def run(self) -> Result:
        pool = [Connection(self._endpoint) for _ in range(self.load.concurrency)]
        try:
            if self.load.warmup:
                await self._run_phase(pool, self.load.warmup, None)
            self._recorder = Recorder()
            self._phase = "measuring"
            await self._run_phase(pool, self.load.seconds, self.load.requests)
        finally:
            for connection in pool:
                connection.close()
        self._elapsed = (_clock() - self._phase_start) / 1e9
        self._phase = "done"
        return self._result(self._elapsed)

    def _result(self, elapsed: float) -> Result:
        recorder = self._recorder
        return Result(
            url=self.request.url,
            method=self.request.method,
            load=self.load,
            requests=recorder.requests,
            duration=elapsed,
            ok=recorder.ok,
            status_codes=dict(recorder.status_codes),
            transport_errors=dict(recorder.transport_errors),
            dropped=recorder.dropped,
            latency=Latency.of(recorder.latency),
            interrupted=self._stopped,
        )

    async def _run_phase(
        self, pool: list[Connection], duration: float | None, requests: int | None
    ) -> None:
        self._phase_start = _clock()
        self._end = self._phase_start + int(duration * 1e9) if duration else 2**63
        self._remaining = requests
        if self._stopped:
            return
        if self.load.rate is None:
            await asyncio.gather(*(self._closed_loop(connection) for connection in pool))
        else:
            await self._open_loop(pool, self.load.rate, duration, requests)

    async def _closed_loop(self, connection: Connection) -> None:
        while self._claim():
            await self._attempt(connection, _clock())

    def _claim(self) -> bool:
        if self._stopped or _clock() >= self._end:
            return False
        if self._remaining is None:
            return True
        if self._remaining == 0:
            return False
        self._remaining -= 1
        return True

    async def _open_loop(
        self, pool: list[Connection], rate: float, duration: float | None, requests: int | None
    ) -> None:
        dispatcher = _Dispatcher(len(pool), self._recorder)
        workers = [asyncio.ensure_future(self._open_worker(c, dispatcher)) for c in pool]
        # the epsilon keeps 0.3 s at 10/s from becoming 4 slots through float rounding
        slots = requests or max(1, math.ceil((duration or 0) * rate - 1e-9))
        try:
            await self._schedule(dispatcher, slots, max(1, int(1e9 / rate)))
        finally:
            dispatcher.close()
            await asyncio.gather(*workers)

    async def _schedule(self, dispatcher: _Dispatcher, slots: int, interval: int) -> None:
        start = self._phase_start
        sent = 0
        while sent < slots and not self._stopped:
            # timers are coarse (uvloop: 1 ms), so offer every slot that is due on each wake-up
            due = min(slots, (_clock() - start) // interval + 1)
            while sent < due:
                dispatcher.offer(start + sent * interval)
                sent += 1
            if sent < slots:
                wait = (start + sent * interval - _clock()) / 1e9
                await asyncio.sleep(min(max(wait, 0), 0.1))

    async def _open_worker(self, connection: Connection, dispatcher: _Dispatcher) -> None:
        while (scheduled := await dispatcher.take()) is not None:
            await self._attempt(connection, scheduled)

    async def _attempt(self, connection: Connection, since: int) -> None:
        try:
            async with asyncio.timeout(self.load.timeout):
                response = await connection.exchange(self._payload)
        except TRANSPORT_ERRORS as exc:
            kind = error_kind(exc)
            self._recorder.failure(kind)
            if kind in ("connection_refused", "dns"):
                await asyncio.sleep(0.05)  # a server that is down must not make the client spin
            return
        self._recorder.response(response.status, (_clock() - since) // 1000)


def run(request: HttpRequest, load: Load) -> Result:
    """Run a load test to its end in a new event loop and return what it measured."""
    return run_async(LoadTest(request, load).run())


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine in a new event loop: uvloop's when installed (it is ~2x faster here)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coroutine)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# targets ------------------------------------------------------------------------------------

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Target:
    """What to load: a model reference (`iris`, `iris:2`, `iris@production`), a path on
    `server` (`/health`) or a full URL."""

    target: str
    server: str
    protocol: str = "v1"
    """`v1` (Berth's REST API) or `v2` (Open Inference Protocol); model references only."""
    body: bytes | None = None
    """The body to send; default for a model: its registered example rows, else none (GET)."""
    rows: int = 1
    """Rows per request in a default model body (v1: batch-predict when more than one)."""
    api_key: str | None = field(default=None, repr=False)
    verify_tls: bool = True

    @property
    def is_model(self) -> bool:
        return "://" not in self.target and not self.target.startswith("/")

    def url(self, path: str) -> str:
        return self.server.rstrip("/") + path

    def request(self, url: str, method: str, body: bytes = b"") -> HttpRequest:
        headers = dict(JSON_HEADERS) if method == "POST" else {}
        return HttpRequest(url, method, headers, body, self.api_key, self.verify_tls)


async def resolve_target(target: Target, timeout: float) -> HttpRequest:
    """The request to repeat. For a model, its metadata is fetched: the model and version must
    exist, and the default body is built from its example rows."""
    if target.protocol not in ("v1", "v2"):
        raise InvalidInput(f"protocol '{target.protocol}' is not known; use v1 or v2")
    if target.rows < 1:
        raise InvalidInput("rows must be at least 1")
    if not target.is_model:
        if target.rows != 1:
            raise InvalidInput("--rows builds a model's body; for a path or URL pass --body")
        url = target.target if "://" in target.target else target.url(target.target)
        method = "GET" if target.body is None else "POST"
        return target.request(url, method, target.body or b"")
    if target.body is not None and target.rows != 1:
        raise InvalidInput("--rows builds the body; with --body, put the rows in the body")
    reference = parse_reference(target.target)
    model = f"model '{reference.name}'"
    detail = await _get_json(target, f"/api/v1/models/{reference.name}", model, timeout)
    version = _pick_version(detail, reference)
    body = target.body
    if body is None:
        body = await _example_body(target, version, timeout)
    return target.request(target.url(_predict_path(target, reference, version)), "POST", body)


async def preflight(request: HttpRequest, timeout: float, model: str | None = None) -> Response:
    """Send the request once: the server must answer and accept the credentials, and for a
    `model` the route must exist. Raises the `BerthError` that says what to fix."""
    response = await fetch(request, timeout)
    refusal = _refusal(response, request.origin, model)
    if refusal is not None:
        raise refusal
    return response


def _refusal(response: Response, origin: str, missing: str | None) -> BerthError | None:
    status, message = response.status, _server_message(response)
    if status == 401:
        return Unauthenticated(
            f"{origin} refused the credentials (401: {message}); pass --api-key KEY or set "
            "BERTH_API_KEY"
        )
    if status == 403:
        return Forbidden(
            f"{origin} refused the request (403: {message}); use a key with the predict scope"
        )
    if status == 404 and missing is not None:
        return NotFound(
            f"{missing} not found on {origin} (404: {message}); see `berth models list`"
        )
    return None


def _server_message(response: Response) -> str:
    try:
        document = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return response.body[:200].decode("utf-8", "replace").strip() or "no details"


async def _get_json(target: Target, path: str, what: str, timeout: float) -> dict[str, Any]:
    request = target.request(target.url(path), "GET")
    response = await fetch(request, timeout)
    refusal = _refusal(response, request.origin, what)
    if refusal is None and response.status != 200:
        refusal = BenchError(
            f"GET {request.url} answered {response.status}: {_server_message(response)}"
        )
    if refusal is not None:
        raise refusal
    document = orjson.loads(response.body)
    if not isinstance(document, dict):
        raise BenchError(f"GET {request.url} did not answer a JSON object; is it a Berth server?")
    return document


def _pick_version(detail: dict[str, Any], reference: Reference) -> dict[str, Any]:
    name, aliases = reference.name, detail.get("aliases") or {}
    if reference.alias is not None and reference.alias not in aliases:
        raise NotFound(
            f"model '{name}' has no alias '{reference.alias}' (aliases: "
            f"{', '.join(aliases) or 'none'}); see `berth models show {name}`"
        )
    number = reference.version
    if number is None:
        number = aliases.get(reference.alias or DEFAULT_ALIAS, detail.get("latest_version"))
    versions = {v.get("version"): v for v in detail.get("versions") or [] if isinstance(v, dict)}
    if number not in versions:
        raise NotFound(
            f"model '{name}' has no version {number} (versions: "
            f"{', '.join(map(str, versions)) or 'none'}); see `berth models show {name}`"
        )
    found: dict[str, Any] = versions[number]
    return found


def _predict_path(target: Target, reference: Reference, version: dict[str, Any]) -> str:
    if target.protocol == "v1":
        batch = target.rows > 1 or _has_instances(target.body)
        return f"/api/v1/models/{reference}/{'batch-predict' if batch else 'predict'}"
    if reference.version is None and reference.alias is None:
        return f"/v2/models/{reference.name}/infer"
    # OIP has no aliases: an alias is resolved once, here, to its version
    return f"/v2/models/{reference.name}/versions/{version['version']}/infer"


async def _example_body(target: Target, version: dict[str, Any], timeout: float) -> bytes:
    examples = version.get("example") or []
    ref = f"{version.get('model')}:{version.get('version')}"
    if not examples:
        raise BenchError(
            f"{ref} was registered without a sample, so there is no example row to send; "
            "pass --body (JSON text or @file.json)"
        )
    rows = [examples[i % len(examples)] for i in range(target.rows)]
    if target.protocol == "v1":
        document: dict[str, Any] = (
            {"features": rows[0]} if target.rows == 1 else {"instances": rows}
        )
    else:
        path = f"/v2/models/{version.get('model')}/versions/{version.get('version')}"
        metadata = await _get_json(target, path, ref, timeout)
        document = {"inputs": _v2_inputs(ref, metadata.get("inputs") or [], rows)}
    return orjson.dumps(document)


def _has_instances(body: bytes | None) -> bool:
    """Whether a given v1 body is a batch (`{"instances": ...}`) rather than one row."""
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and "instances" in document


def _v2_inputs(ref: str, inputs: list[dict[str, Any]], rows: list[Any]) -> list[dict[str, Any]]:
    if isinstance(rows[0], dict):  # a tabular model: one input per column
        return [
            {
                "name": spec["name"],
                "datatype": spec["datatype"],
                "shape": [len(rows)],
                "data": [row.get(spec["name"]) for row in rows],
            }
            for spec in inputs
        ]
    if len(inputs) != 1:
        raise BenchError(
            f"{ref} takes {len(inputs)} input tensors and its example rows fill only one; "
            "pass --body with an Open Inference Protocol request"
        )
    shape = [len(rows), *_shape(rows[0])]
    return [
        {"name": inputs[0]["name"], "datatype": inputs[0]["datatype"], "shape": shape, "data": rows}
    ]


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape
