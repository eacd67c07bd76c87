"""Rate-limit buckets in Redis, shared by every worker and replica using the same Redis.

One Lua script reads, refills and takes a token atomically using the Redis server's clock, so
replicas whose clocks disagree still share one limit (`berth.security.ratelimit` has the
in-process buckets and the edge's `check`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from redis.exceptions import NoScriptError, RedisError

from berth import redis_client
from berth.errors import NotReady
from berth.security.ratelimit import (
    BACKEND_ERRORS,
    KEY_PREFIX,
    WARN_EVERY_SECONDS,
    Decision,
    Rate,
    decide,
    unlimited,
)

log = logging.getLogger("berth.security")

# KEYS[1] bucket key; ARGV[1] capacity (count), ARGV[2] refill in tokens per second.
# Returns {allowed (0/1), tokens left as a string}: Lua numbers would come back truncated.
_SCRIPT = """
local capacity = tonumber(ARGV[1])
local per_second = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = capacity
  updated = now
end
local elapsed = now - updated
if elapsed < 0 then
  elapsed = 0
end
tokens = math.min(capacity, tokens + elapsed * per_second)
local allowed = 0
if tokens >= 1 - 1e-9 then
  tokens = math.max(0, tokens - 1)
  allowed = 1
end
local left = string.format('%.17g', tokens)
redis.call('HSET', KEYS[1], 'tokens', left, 'ts', string.format('%.17g', now))
-- Once full again the bucket equals a fresh one, so it may expire then.
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / per_second * 1000) + 1000)
return {allowed, left}
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisRateLimiter:
    """Buckets in Redis, shared by every worker and replica using the same Redis.

    Socket timeouts are short so a dead Redis does not stall requests, and after a failure
    Redis is left alone for `cooldown_seconds` (checks are then decided as if it had failed)
    before one check tries it again; the client reconnects by itself once Redis is back.
    """

    def __init__(
        self,
        url: str,
        fail_open: bool = True,
        *,
        prefix: str = KEY_PREFIX,
        connect_timeout: float = 0.25,
        read_timeout: float = 0.25,
        cooldown_seconds: float = 1.0,
    ) -> None:
        self.fail_open = fail_open
        self._prefix = prefix
        self._cooldown = cooldown_seconds
        self._client = redis_client.connect(
            url, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._down_until = 0.0  # monotonic; > 0 while Redis is considered unreachable
        self._last_warning = -math.inf

    async def hit(self, bucket: str, rate: Rate) -> Decision:
        now = time.monotonic()
        if self._down_until:
            if now < self._down_until:
                return self._unavailable(rate, None)
            self._down_until = now + self._cooldown  # this check probes; others wait
        try:
            allowed, left = await self._run(self._prefix + bucket, rate)
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self._cooldown
            return self._unavailable(rate, exc)
        if self._down_until:
            self._down_until = 0.0
            log.info("rate limiting: Redis is reachable again")
        return decide(bool(allowed), float(left), rate)

    async def _run(self, key: str, rate: Rate) -> tuple[int, bytes]:
        args = (key, str(rate.count), repr(rate.per_second))
        try:
            result = await self._client.evalsha(_SCRIPT_SHA, 1, *args)
        except NoScriptError:  # first use, or Redis restarted or flushed its script cache
            # EVAL runs the script and caches it on the server for the next EVALSHA.
            result = await self._client.eval(_SCRIPT, 1, *args)
        return int(result[0]), result[1]

    def _unavailable(self, rate: Rate, exc: BaseException | None) -> Decision:
        BACKEND_ERRORS.inc()
        now = time.monotonic()
        if exc is not None and now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            action = "allowing requests unlimited" if self.fail_open else "refusing requests"
            log.warning(
                "rate limiting: Redis is unreachable (%s: %s); %s until it is back",
                type(exc).__name__,
                exc,
                action,
            )
        if self.fail_open:
            return unlimited(rate)
        raise NotReady(
            "rate limiting is unavailable (Redis unreachable); retry shortly", retry_after=1
        )

    async def close(self) -> None:
        await self._client.aclose()
