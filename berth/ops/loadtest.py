"""A load generator for HTTP endpoints: fixed concurrency (closed loop) or fixed rate (open loop).

It runs on the small client of `http1` (it usually shares the machine with the server it
measures) and keeps latencies in a log-linear histogram of microseconds (bounded memory, under
0.2 % error).

Use it from Python::

    request = HttpRequest("http://127.0.0.1:8321/health")
    result = run(request, Load(concurrency=16, duration=5))
    print(result.rps, result.latency.p99)

During a run nothing is raised for the server's sake: HTTP statuses are counted, and transport
failures are counted by kind (`http1.error_kind`). What stops a run from starting is checked
before it, in `targets`.
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol, TypeVar

from berth.errors import InvalidInput
from berth.ops.http1 import TRANSPORT_ERRORS, Connection, Response, error_kind
from berth.ops.http1 import HttpRequest as HttpRequest  # re-exported: what `run` repeats

T = TypeVar("T")
_clock = time.perf_counter_ns


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


class Exchanger(Protocol):
    """One client connection: sends a payload, returns the response's status (HTTP's, or the
    HTTP equivalent of a gRPC status)."""

    async def exchange(self, payload: bytes) -> Response: ...

    def close(self) -> Awaitable[None] | None: ...


class LoadTest:
    """One run of `load` against `request`; `progress()` may be read while it runs.

    By default each connection is an HTTP/1.1 connection sending `request`; `connect` and
    `payload` replace both (the gRPC client of `berth bench --protocol grpc`)."""

    def __init__(
        self,
        request: HttpRequest,
        load: Load,
        connect: Callable[[], Exchanger] | None = None,
        payload: bytes | None = None,
        shown: tuple[str, str] | None = None,
    ) -> None:
        self.request = request
        self.load = load
        self.method, self.url = shown or (request.method, request.url)
        """What the report says was called (`gRPC`, `grpc://host:port/...` for gRPC)."""
        self._payload = request.encode() if payload is None else payload
        endpoint = request.endpoint()
        self._connect: Callable[[], Exchanger] = connect or (lambda: Connection(endpoint))
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
        pool = [self._connect() for _ in range(self.load.concurrency)]
        try:
            if self.load.warmup:
                await self._run_phase(pool, self.load.warmup, None)
            self._recorder = Recorder()
            self._phase = "measuring"
            await self._run_phase(pool, self.load.seconds, self.load.requests)
        finally:
            for connection in pool:
                closing = connection.close()
                if closing is not None:
                    await closing
        self._elapsed = (_clock() - self._phase_start) / 1e9
        self._phase = "done"
        return self._result(self._elapsed)

    def _result(self, elapsed: float) -> Result:
        recorder = self._recorder
        return Result(
            url=self.url,
            method=self.method,
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
        self, pool: list[Exchanger], duration: float | None, requests: int | None
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

    async def _closed_loop(self, connection: Exchanger) -> None:
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
        self, pool: list[Exchanger], rate: float, duration: float | None, requests: int | None
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

    async def _open_worker(self, connection: Exchanger, dispatcher: _Dispatcher) -> None:
        while (scheduled := await dispatcher.take()) is not None:
            await self._attempt(connection, scheduled)

    async def _attempt(self, connection: Exchanger, since: int) -> None:
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
