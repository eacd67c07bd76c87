"""One way to open Redis for the parts that share it (rate limits, the prediction cache)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from berth.errors import InvalidInput


def connect(url: str, *, connect_timeout: float, read_timeout: float) -> aioredis.Redis:
    """A client (connections open lazily) with short timeouts, so a dead Redis cannot stall."""
    try:
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=read_timeout,
            # One immediate retry on a fresh connection covers pooled connections that a Redis
            # restart broke. Timeouts are not retried: the command may have run.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
    except ValueError as exc:
        raise InvalidInput(
            f"redis_url is not a Redis URL ({exc}); write e.g. redis://127.0.0.1:6379/0"
        ) from exc
