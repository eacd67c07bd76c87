"""Rate limits as token buckets, in process or shared by replicas through Redis.

A `Rate` of `count/period` is a bucket holding at most `count` tokens (the burst) that refills
at `count / period` tokens per second; each request takes one token or is refused.

`MemoryRateLimiter` keeps buckets in this process (one worker's view only). `RedisRateLimiter`
(`berth.security.redis_ratelimit`) keeps them in Redis, where one Lua script reads, refills and
takes a token atomically using the Redis server's clock, so replicas whose clocks disagree still
share one limit. When Redis cannot be reached, it either lets requests through (fail open: a warning at most every 10 s and the
metric `berth_rate_limit_backend_errors_total`) or refuses them with `NotReady` (fail closed).

The HTTP edge calls `check()` with the buckets that apply to a request and turns the returned
`Decision` into `RateLimit-*` headers, or the `RateLimited` it raises into a 429 with Retry-After.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from berth.errors import InvalidInput, RateLimited
from berth.security.config import RateLimitConfig

log = logging.getLogger("berth.security")

RATE_LIMITED = Counter(
    "berth_rate_limited",
    "Requests refused by a rate limit, by kind of limit (key, model, address).",
    ["kind"],
)
for _kind in ("key", "model", "address"):
    RATE_LIMITED.labels(kind=_kind)  # the series exist (at 0) before the first refusal
BACKEND_ERRORS = Counter(
    "berth_rate_limit_backend_errors",
    "Rate-limit checks decided without the backend (Redis unreachable): allowed when failing "
    "open, refused with 503 when failing closed.",
)

KEY_PREFIX = "berth:rl:"
WARN_EVERY_SECONDS = 10.0
# Float error in refills must not refuse a request that is owed a whole token.
_EPSILON = 1e-9


# rates ----------------------------------------------------------------------------------------

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])\s*$")


@dataclass(frozen=True)
class Rate:
    """`count` requests per `seconds`: a bucket of `count` tokens refilled over `seconds`."""

    count: int
    seconds: float

    def __post_init__(self) -> None:
        if self.count < 1 or not self.seconds > 0 or math.isinf(self.seconds):
            raise InvalidInput(
                f"rate {self.count}/{self.seconds}s must allow at least 1 request over a "
                "positive, finite period"
            )

    @property
    def per_second(self) -> float:
        """Refill speed in tokens per second."""
        return self.count / self.seconds

    def __str__(self) -> str:
        for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            amount = self.seconds / size
            if amount == int(amount):
                return (
                    f"{self.count}/{unit}" if amount == 1 else f"{self.count}/{int(amount)}{unit}"
                )
        return f"{self.count}/{self.seconds!r}s"


@functools.lru_cache(maxsize=1024)  # the edge parses configured rates on every request
def parse_rate(text: str) -> Rate:
    """`50/s`, `1000/m`, `10/h`, `5/10s`, `100/1m` (units s, m, h, d) into a `Rate`."""
    match = _RATE.match(text)
    if match is None:
        raise InvalidInput(
            f"rate {text!r} is not COUNT/PERIOD; write e.g. 50/s, 1000/m, 10/h or 5/10s"
        )
    count, amount, unit = match.groups()
    return Rate(int(count), float(amount or 1) * _UNITS[unit])


# decisions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The outcome of taking one token.

    `remaining` is the whole tokens left, `reset_seconds` the time until the bucket is full
    again and `retry_after` the time until one token is available (0 when allowed).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float
    retry_after: float


def decide(allowed: bool, tokens: float, rate: Rate) -> Decision:
    """A decision from the tokens left in the bucket after the attempt."""
    tokens = max(0.0, min(float(rate.count), tokens))
    return Decision(
        allowed=allowed,
        limit=rate.count,
        remaining=math.floor(tokens + _EPSILON),
        reset_seconds=(rate.count - tokens) / rate.per_second,
        retry_after=0.0 if allowed else max(0.0, (1.0 - tokens) / rate.per_second),
    )


def unlimited(rate: Rate) -> Decision:
    """What a failed-open check reports: allowed, and nothing known about the bucket."""
    return Decision(
        allowed=True, limit=rate.count, remaining=rate.count, reset_seconds=0.0, retry_after=0.0
    )


class RateLimiter(Protocol):
    async def hit(self, bucket: str, rate: Rate) -> Decision:
        """Take one token from `bucket` (created full at first use) under `rate`."""
        ...

    async def close(self) -> None: ...


# in process -----------------------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    updated: float  # clock reading of `tokens`
    full_at: float  # clock reading when the bucket is full again (then it can be dropped)


class MemoryRateLimiter:
    """Buckets in this process: each worker and replica counts on its own.

    Memory is bounded: buckets that have refilled completely are dropped (a fresh bucket is
    identical), and beyond `max_buckets` the least recently used one goes.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        if max_buckets < 1:
            raise InvalidInput("max_buckets must be at least 1")
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # No await happens inside a hit, so one event loop is safe already; the lock also
        # covers callers on several threads.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    async def hit(self, bucket: str, rate: Rate) -> Decision:
        return self.hit_now(bucket, rate)

    def hit_now(self, bucket: str, rate: Rate) -> Decision:
        """The synchronous `hit`."""
        with self._lock:
            now = self._clock()
            state = self._buckets.pop(bucket, None)
            if state is None:
                tokens = float(rate.count)
            else:
                elapsed = max(0.0, now - state.updated)
                tokens = min(float(rate.count), state.tokens + elapsed * rate.per_second)
            allowed = tokens >= 1.0 - _EPSILON
            if allowed:
                tokens = max(0.0, tokens - 1.0)
            full_at = now + (rate.count - tokens) / rate.per_second
            self._buckets[bucket] = _Bucket(tokens, now, full_at)  # most recently used last
            self._drop(now)
            return decide(allowed, tokens, rate)

    def _drop(self, now: float) -> None:
        # Least recently used first: drop those that have refilled, then any beyond the bound.
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if oldest.full_at > now and len(self._buckets) <= self._max_buckets:
                break
            self._buckets.popitem(last=False)

    async def close(self) -> None:
        with self._lock:
            self._buckets.clear()


def build_limiter(config: RateLimitConfig) -> RateLimiter:
    """Redis when `redis_url` is set (limits shared by replicas), else in-process buckets."""
    if config.redis_url:
        # redis (8 MB, 50 ms to import) only in servers that share limits through it
        from berth.security.redis_ratelimit import RedisRateLimiter

        return RedisRateLimiter(config.redis_url, fail_open=config.fail_open)
    return MemoryRateLimiter()


# the edge -------------------------------------------------------------------------------------

_WHOSE = {"key": "this key", "model": "this model", "address": "this client address"}


def count_refused(kind: str) -> None:
    """Count one request refused by a limit of `kind` (`check` does this itself)."""
    RATE_LIMITED.labels(kind=kind).inc()


def _format_seconds(seconds: float) -> str:
    if seconds >= 10:
        return f"{math.ceil(seconds)}"
    if seconds >= 1:
        return f"{math.ceil(seconds * 10) / 10:.1f}"
    return f"{max(0.01, math.ceil(seconds * 100) / 100):.2f}"


async def check(limiter: RateLimiter, checks: list[tuple[str, str, Rate]]) -> Decision:
    """Take a token from each `(kind, bucket, rate)` in order; refuse at the first empty one.

    Raises `RateLimited` for the first bucket that refuses (and counts it in
    `berth_rate_limited_total{kind}`); otherwise returns the most restrictive decision (fewest
    remaining) for the headers. `checks` must not be empty. Buckets are taken one after
    the other, not as one transaction: a request that bucket A allows and bucket B refuses has
    still cost A a token. Put the bucket most likely to refuse first if that matters.
    """
    if not checks:
        raise ValueError("check() needs at least one (kind, bucket, rate)")
    tightest: Decision | None = None
    for kind, bucket, rate in checks:
        decision = await limiter.hit(bucket, rate)
        if not decision.allowed:
            count_refused(kind)
            whose = _WHOSE.get(kind, kind)
            raise RateLimited(
                f"rate limit of {rate} for {whose} exceeded; "
                f"retry in {_format_seconds(decision.retry_after)} s",
                retry_after=decision.retry_after,
                limit=decision.limit,
                reset=decision.reset_seconds,
            )
        if tightest is None or (decision.remaining, -decision.reset_seconds) < (
            tightest.remaining,
            -tightest.reset_seconds,
        ):
            tightest = decision
    assert tightest is not None
    return tightest
