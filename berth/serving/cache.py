"""Prediction cache: answer a repeated input of a deterministic model without running it.

Opt-in per model: only a model whose output depends on nothing but its input may be cached.
Keys are in `cache_keys`, the stored format in `cache_values`.

`MemoryCache` keeps the *encoded* bytes in an LRU with a TTL, so its memory bound counts real
bytes (plus a fixed per-entry overhead) rather than a guess at the size of numpy objects, and a
hit, decoded afresh each time, can never be changed by a caller mutating an earlier answer.
`RedisCache` (`berth.serving.redis_cache`) is shared by replicas; Redis failing must never fail
a prediction, so every Redis error is a counted miss. Backends count evictions and errors; the
dataplane counts hits and misses per model.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from berth.errors import InvalidInput
from berth.observability import metrics
from berth.runtimes.base import Prediction
from berth.serving.cache_keys import NotCacheable
from berth.serving.cache_values import decode_prediction, encode_prediction

log = logging.getLogger("berth.serving")

Array = np.ndarray[Any, Any]

KEY_PREFIX = "berth:cache:"
WARN_EVERY_SECONDS = 30.0
ENTRY_OVERHEAD = 256
"""Bytes charged per memory entry beyond its encoded value: the key string and the Python
objects holding the entry. Without it, many tiny entries would exceed the bound many times."""


class PredictionCache(Protocol):
    """Where predictions are kept. Failures are misses: no method raises on backend trouble."""

    name: str

    async def get(self, key: str) -> Prediction | None:
        """The prediction stored under `key` (a `cache_key`), or None."""
        ...

    async def put(self, key: str, prediction: Prediction) -> None:
        """Store `prediction` under `key`; a prediction that is `NotCacheable` is skipped."""
        ...

    async def close(self) -> None: ...


def encoded(prediction: Prediction) -> bytes | None:
    """The bytes to store, or None for a prediction with no exact encoding (not cached)."""
    try:
        return encode_prediction(prediction)
    except NotCacheable as exc:
        log.debug("prediction not cached: %s", exc)
        return None


class MemoryCache:
    """An LRU of encoded predictions in this process, bounded in bytes, entries expiring.

    Every call completes without awaiting, so tasks on one event loop cannot interleave inside
    it. Expired entries are dropped when looked up or when they reach the LRU end; until then
    they count against the bound (as would live entries of that size).
    """

    name = "memory"

    def __init__(
        self,
        max_bytes: int,
        ttl_seconds: float,
        max_entries: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1:
            raise InvalidInput(f"cache max_bytes must be at least 1, got {max_bytes}")
        check_ttl(ttl_seconds)
        if max_entries is not None and max_entries < 1:
            raise InvalidInput(f"cache max_entries must be at least 1, got {max_entries}")
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        # key -> (expires at, encoded prediction); least recently used first
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        """Bytes charged against `max_bytes`: encoded values plus `ENTRY_OVERHEAD` each."""
        return self._bytes

    async def get(self, key: str) -> Prediction | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, data = entry
        if expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return decode_prediction(data)

    async def put(self, key: str, prediction: Prediction) -> None:
        data = encoded(prediction)
        if data is None:
            return
        if _charge(key, data) > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (self._clock() + self.ttl_seconds, data)
        self._bytes += _charge(key, data)
        self._shrink()

    def _shrink(self) -> None:
        now = self._clock()
        while self._bytes > self.max_bytes or (
            self.max_entries is not None and len(self._entries) > self.max_entries
        ):
            key, (expires, _) = next(iter(self._entries.items()))
            self._remove(key)
            if expires > now:  # an expired entry was no longer in the cache: not an eviction
                metrics.CACHE_EVICTIONS.inc()

    def _remove(self, key: str) -> None:
        _, data = self._entries.pop(key)
        self._bytes -= _charge(key, data)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0


def _charge(key: str, data: bytes) -> int:
    return len(data) + len(key) + ENTRY_OVERHEAD


def check_ttl(ttl_seconds: float) -> None:
    if not (ttl_seconds > 0 and math.isfinite(ttl_seconds)):
        raise InvalidInput(
            f"cache ttl_seconds must be a positive, finite number of seconds, got {ttl_seconds}"
        )


def build_cache(
    backend: str, *, redis_url: str | None, max_bytes: int, ttl_seconds: float
) -> PredictionCache:
    """The configured backend: "memory" (this process, at most `max_bytes` in total) or
    "redis" (shared by replicas at `redis_url`; entries above `max_bytes` are not stored)."""
    if backend == "memory":
        return MemoryCache(max_bytes=max_bytes, ttl_seconds=ttl_seconds)
    if backend == "redis":
        if not redis_url:
            raise InvalidInput(
                "the redis prediction cache needs a Redis URL; set BERTH_REDIS_URL "
                "(e.g. redis://127.0.0.1:6379/0), or use the memory cache backend"
            )
        # redis (8 MB, 50 ms to import) only in servers that cache through it
        from berth.serving.redis_cache import RedisCache

        return RedisCache(redis_url, ttl_seconds=ttl_seconds, max_entry_bytes=max_bytes)
    raise InvalidInput(
        f"cache backend {backend!r} is unknown; set BERTH_CACHE_BACKEND to memory or redis"
    )
