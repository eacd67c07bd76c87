"""The prediction cache in Redis, shared by every replica using the same Redis and prefix
(`berth.serving.cache` has the in-process cache and the backends' protocol)."""

from __future__ import annotations

import logging
import math
import time

from redis.exceptions import RedisError

from berth import redis_client
from berth.observability import metrics
from berth.runtimes.base import Prediction
from berth.serving.cache import KEY_PREFIX, WARN_EVERY_SECONDS, check_ttl, encoded
from berth.serving.cache_values import decode_prediction

log = logging.getLogger("berth.serving")


class RedisCache:
    """Predictions in Redis, shared by every replica using the same Redis and prefix.

    Entries expire in Redis (SET with PX); Redis' own `maxmemory` policy bounds the total. Any
    Redis failure is a miss or a skipped store, counted in `berth_cache_errors_total{backend=
    "redis"}` and logged at most every `WARN_EVERY_SECONDS`. Timeouts are short, and after a
    failure Redis is left alone for `cooldown_seconds` (lookups are misses) before one call
    tries it again, so a dead Redis costs requests almost nothing.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_seconds: float,
        prefix: str = KEY_PREFIX,
        *,
        max_entry_bytes: int | None = None,
        timeout_seconds: float = 0.25,
        cooldown_seconds: float = 1.0,
    ) -> None:
        check_ttl(ttl_seconds)
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix
        self.max_entry_bytes = max_entry_bytes
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._cooldown = cooldown_seconds
        self._client = redis_client.connect(
            url, connect_timeout=timeout_seconds, read_timeout=timeout_seconds
        )
        self._down_until = 0.0  # monotonic; > 0 while Redis is considered unreachable
        self._last_warning: dict[str, float] = {}

    async def get(self, key: str) -> Prediction | None:
        if not self._may_try():
            return None
        try:
            data = await self._client.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._succeeded()
        if not isinstance(data, bytes):  # None: not there (a str cannot come without decoding)
            return None
        try:
            return decode_prediction(data)
        except ValueError as exc:
            # Corrupt, or written by something else under our prefix: a miss, and worth a look.
            metrics.CACHE_ERRORS.labels(self.name).inc()
            self._warn("decode", f"a cache entry could not be decoded ({exc}); it counts as a miss")
            return None

    async def put(self, key: str, prediction: Prediction) -> None:
        data = encoded(prediction)
        if data is None:
            return
        if self.max_entry_bytes is not None and len(data) > self.max_entry_bytes:
            return
        if not self._may_try():
            return
        try:
            await self._client.set(self.prefix + key, data, px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._succeeded()

    def _may_try(self) -> bool:
        if not self._down_until:
            return True
        now = time.monotonic()
        if now < self._down_until:
            metrics.CACHE_ERRORS.labels(self.name).inc()
            return False
        self._down_until = now + self._cooldown  # this call probes; the others wait
        return True

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self._cooldown
        metrics.CACHE_ERRORS.labels(self.name).inc()
        self._warn(
            "unreachable",
            f"Redis is unreachable ({type(exc).__name__}: {exc}); "
            "predicting without the cache until it is back",
        )

    def _succeeded(self) -> None:
        if self._down_until:
            self._down_until = 0.0
            log.info("prediction cache: Redis is reachable again")

    def _warn(self, kind: str, message: str) -> None:
        # Per kind, so a stream of corrupt entries cannot hide that Redis went down.
        now = time.monotonic()
        if now - self._last_warning.get(kind, -math.inf) >= WARN_EVERY_SECONDS:
            self._last_warning[kind] = now
            log.warning("prediction cache: %s", message)

    async def close(self) -> None:
        await self._client.aclose()
