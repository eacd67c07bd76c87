"""Token-bucket rate limits: rates, the in-process limiter, the Redis limiter and `check`.

Redis tests use the shared server at 127.0.0.1:6379 under a unique key prefix (removed after),
and a private `redis-server` on a free port for the outage tests, so the shared one is never
stopped.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from berth.config import Settings
from berth.errors import InvalidInput, NotReady, RateLimited
from berth.security.config import RateLimitConfig
from berth.security.ratelimit import (
    KEY_PREFIX,
    Decision,
    MemoryRateLimiter,
    Rate,
    build_limiter,
    check,
    parse_rate,
)
from berth.security.redis_ratelimit import RedisRateLimiter
from tests.ports import free_port
from tests.private_redis import PrivateRedis

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def _require_service(name: str, reason: str) -> None:
    # Imported here: tests.conftest pulls in scikit-learn, which the spawned hammer processes
    # below would otherwise import too.
    from tests.conftest import require_service

    require_service(name, reason)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _allowed(limiter: Any, bucket: str, rate: Rate, times: int) -> list[bool]:
    return [(await limiter.hit(bucket, rate)).allowed for _ in range(times)]


# rates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50/s", Rate(50, 1.0)),
        ("1000/m", Rate(1000, 60.0)),
        ("10/h", Rate(10, 3600.0)),
        ("5/10s", Rate(5, 10.0)),
        ("100/1m", Rate(100, 60.0)),
        ("7/d", Rate(7, 86400.0)),
        (" 3 / 2h ", Rate(3, 7200.0)),
        ("4/0.5s", Rate(4, 0.5)),
    ],
)
def test_parse_rate_accepts_count_per_period(text: str, expected: Rate) -> None:
    rate = parse_rate(text)
    assert rate == expected
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize(
    ("rate", "shown"),
    [
        (Rate(50, 1), "50/s"),
        (Rate(5, 10), "5/10s"),
        (Rate(100, 60), "100/m"),
        (Rate(5, 120), "5/2m"),
        (Rate(10, 3600), "10/h"),
        (Rate(4, 0.5), "4/0.5s"),
    ],
)
def test_rate_str(rate: Rate, shown: str) -> None:
    assert str(rate) == shown


@pytest.mark.parametrize(
    "text", ["x", "", "50", "50/", "/s", "50/w", "1.5/s", "50/s/s", "50 per second", "-1/s"]
)
def test_parse_rate_rejects_other_text(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"is not COUNT/PERIOD; write e\.g\. 50/s"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["0/s", "5/0s", "5/0.0m"])
def test_parse_rate_rejects_empty_rates(text: str) -> None:
    with pytest.raises(InvalidInput, match="at least 1 request over a positive"):
        parse_rate(text)


# in process -----------------------------------------------------------------------------------


def test_memory_burst_then_refused_with_retry_after() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    rate = Rate(5, 1.0)

    async def scenario() -> list[Decision]:
        return [await limiter.hit("b", rate) for _ in range(6)]

    decisions = asyncio.run(scenario())
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert all(d.limit == 5 for d in decisions)
    assert decisions[0].retry_after == 0.0
    assert decisions[0].reset_seconds == pytest.approx(0.2)
    refused = decisions[-1]
    assert refused.retry_after == pytest.approx(0.2)  # one token refills in 1/5 s
    assert refused.reset_seconds == pytest.approx(1.0)


def test_memory_refills_over_time_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    rate = Rate(5, 1.0)

    async def scenario() -> None:
        assert await _allowed(limiter, "b", rate, 6) == [True] * 5 + [False]
        clock.advance(0.1)
        assert not (await limiter.hit("b", rate)).allowed  # half a token
        clock.advance(0.1)
        decision = await limiter.hit("b", rate)
        assert decision.allowed
        assert decision.remaining == 0
        assert not (await limiter.hit("b", rate)).allowed
        clock.advance(60)  # long idle: full again, never more than the burst
        assert await _allowed(limiter, "b", rate, 6) == [True] * 5 + [False]

    asyncio.run(scenario())


def test_memory_buckets_are_independent() -> None:
    limiter = MemoryRateLimiter(clock=FakeClock())
    rate = Rate(2, 60)

    async def scenario() -> None:
        assert await _allowed(limiter, "key:a", rate, 3) == [True, True, False]
        assert await _allowed(limiter, "key:b", rate, 3) == [True, True, False]
        assert await _allowed(limiter, "model:a", Rate(1, 60), 2) == [True, False]

    asyncio.run(scenario())


def test_memory_concurrent_hits_take_exactly_the_burst() -> None:
    limiter = MemoryRateLimiter()
    rate = Rate(10, 3600)

    async def scenario() -> list[Decision]:
        return await asyncio.gather(*(limiter.hit("b", rate) for _ in range(50)))

    assert sum(d.allowed for d in asyncio.run(scenario())) == 10


def test_memory_keeps_at_most_max_buckets_least_recently_used_out() -> None:
    limiter = MemoryRateLimiter(clock=FakeClock(), max_buckets=3)
    rate = Rate(2, 60)

    async def scenario() -> None:
        assert await _allowed(limiter, "a", rate, 3) == [True, True, False]
        for name in ("b", "c", "d"):
            await limiter.hit(name, rate)
        assert len(limiter) == 3
        # "a" was the least recently used, so it was dropped and starts full again.
        assert await _allowed(limiter, "a", rate, 1) == [True]
        assert len(limiter) == 3

    asyncio.run(scenario())


def test_memory_drops_buckets_that_have_refilled() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    rate = Rate(2, 1.0)

    async def scenario() -> None:
        for n in range(1000):
            await limiter.hit(f"caller:{n}", rate)
        assert len(limiter) == 1000
        clock.advance(1.5)  # every bucket is full again, same as a fresh one
        await limiter.hit("caller:new", rate)
        assert len(limiter) == 1
        await limiter.close()
        assert len(limiter) == 0

    asyncio.run(scenario())


def test_memory_rejects_a_zero_bound() -> None:
    with pytest.raises(InvalidInput):
        MemoryRateLimiter(max_buckets=0)


# check ----------------------------------------------------------------------------------------


def test_check_returns_the_tightest_decision() -> None:
    limiter = MemoryRateLimiter(clock=FakeClock())
    checks = [("key", "key:abc", Rate(50, 1)), ("model", "model:churn", Rate(3, 1))]

    async def scenario() -> Decision:
        return await check(limiter, checks)

    decision = asyncio.run(scenario())
    assert decision.allowed
    assert (decision.limit, decision.remaining) == (3, 2)


def test_check_raises_for_the_first_refusing_limit_and_counts_it() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    key_rate, model_rate = Rate(50, 1), Rate(2, 1)
    checks = [("key", "key:abc", key_rate), ("model", "model:churn", model_rate)]
    before = _metric("berth_rate_limited_total", kind="model")

    async def scenario() -> RateLimited:
        await check(limiter, checks)
        await check(limiter, checks)
        with pytest.raises(RateLimited) as caught:
            await check(limiter, checks)
        # The key's bucket paid for the refused request too (documented behaviour).
        assert (await limiter.hit("key:abc", key_rate)).remaining == 46
        return caught.value

    error = asyncio.run(scenario())
    assert error.message == "rate limit of 2/s for this model exceeded; retry in 0.50 s"
    assert error.retry_after == pytest.approx(0.5)
    assert error.limit == 2
    assert error.reset == pytest.approx(1.0)
    assert _metric("berth_rate_limited_total", kind="model") == before + 1


def test_check_message_names_the_key_limit() -> None:
    limiter = MemoryRateLimiter(clock=FakeClock())
    checks = [("key", "key:abc", Rate(50, 1))]
    before = _metric("berth_rate_limited_total", kind="key")

    async def scenario() -> None:
        for _ in range(50):
            await check(limiter, checks)
        with pytest.raises(
            RateLimited, match=r"^rate limit of 50/s for this key exceeded; retry in 0.02 s$"
        ):
            await check(limiter, checks)

    asyncio.run(scenario())
    assert _metric("berth_rate_limited_total", kind="key") == before + 1


def test_check_needs_a_bucket() -> None:
    with pytest.raises(ValueError, match="at least one"):
        asyncio.run(check(MemoryRateLimiter(), []))


def test_build_limiter_picks_the_backend(settings: Settings) -> None:
    assert isinstance(build_limiter(RateLimitConfig.from_settings(settings)), MemoryRateLimiter)
    limiter = build_limiter(
        RateLimitConfig.from_settings(settings.model_copy(update={"redis_url": SHARED_REDIS_URL}))
    )
    assert isinstance(limiter, RedisRateLimiter)
    assert limiter.fail_open is settings.rate_limit_fail_open
    asyncio.run(limiter.close())


def test_redis_limiter_rejects_a_url_that_is_not_redis() -> None:
    with pytest.raises(InvalidInput, match="redis_url is not a Redis URL"):
        RedisRateLimiter("http://127.0.0.1:6379")


# Redis, shared server -------------------------------------------------------------------------


@dataclass
class SharedRedis:
    client: redis.Redis
    prefix: str

    def limiter(self, **options: Any) -> RedisRateLimiter:
        return RedisRateLimiter(
            SHARED_REDIS_URL, fail_open=False, prefix=self.prefix, read_timeout=2, **options
        )


@pytest.fixture
def shared_redis() -> Iterator[SharedRedis]:
    client = redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        _require_service("Redis at 127.0.0.1:6379", str(exc))
    prefix = f"{KEY_PREFIX}test:{uuid.uuid4().hex}:"
    yield SharedRedis(client, prefix)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_redis_burst_then_refused_and_the_key_expires(shared_redis: SharedRedis) -> None:
    rate = Rate(5, 60)

    async def scenario() -> list[Decision]:
        limiter = shared_redis.limiter()
        try:
            return [await limiter.hit("key:abc", rate) for _ in range(6)]
        finally:
            await limiter.close()

    decisions = asyncio.run(scenario())
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    refused = decisions[-1]
    assert 11.0 < refused.retry_after <= 12.0  # one token per 12 s
    assert 59.0 < refused.reset_seconds <= 60.0
    key = f"{shared_redis.prefix}key:abc"
    assert 59_000 < shared_redis.client.pttl(key) <= 61_000  # gone once it would be full again


def test_redis_refills_over_time(shared_redis: SharedRedis) -> None:
    rate = Rate(2, 0.2)  # a token every 0.1 s

    async def scenario() -> None:
        limiter = shared_redis.limiter()
        try:
            assert await _allowed(limiter, "b", rate, 2) == [True, True]
            refused = await limiter.hit("b", rate)
            assert not refused.allowed
            assert 0 < refused.retry_after <= 0.1
            await asyncio.sleep(refused.retry_after + 0.03)
            assert (await limiter.hit("b", rate)).allowed
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_redis_buckets_are_independent(shared_redis: SharedRedis) -> None:
    rate = Rate(2, 60)

    async def scenario() -> None:
        limiter = shared_redis.limiter()
        try:
            assert await _allowed(limiter, "key:a", rate, 3) == [True, True, False]
            assert await _allowed(limiter, "key:b", rate, 3) == [True, True, False]
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_redis_check_raises_rate_limited(shared_redis: SharedRedis) -> None:
    checks = [("address", "address:10.0.0.1", Rate(1, 60))]

    async def scenario() -> None:
        limiter = shared_redis.limiter()
        try:
            await check(limiter, checks)
            with pytest.raises(
                RateLimited, match="rate limit of 1/m for this client address exceeded; retry in"
            ):
                await check(limiter, checks)
        finally:
            await limiter.close()

    asyncio.run(scenario())


HAMMER_RATE = Rate(100, 3600)  # refills 0.03 tokens/s: none during the test


def _hammer(prefix: str, attempts: int, barrier: Any, results: Any) -> None:
    results.put(asyncio.run(_hammer_async(prefix, attempts, barrier)))


async def _hammer_async(prefix: str, attempts: int, barrier: Any) -> int:
    limiter = RedisRateLimiter(
        SHARED_REDIS_URL, fail_open=False, prefix=prefix, connect_timeout=2, read_timeout=5
    )
    await limiter.hit("warm-up", HAMMER_RATE)  # connected, script cached
    barrier.wait(10)
    gate = asyncio.Semaphore(16)

    async def one() -> bool:
        async with gate:
            return (await limiter.hit("shared", HAMMER_RATE)).allowed

    allowed = await asyncio.gather(*(one() for _ in range(attempts)))
    await limiter.close()
    return sum(allowed)


def test_redis_is_atomic_across_processes(shared_redis: SharedRedis) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    results = context.Queue()
    workers = [
        # 80 attempts each for 100 tokens: exactly 100 allowed proves the count is atomic, and
        # needs both processes (neither can take more than 80), whatever the scheduler does.
        context.Process(target=_hammer, args=(shared_redis.prefix, 80, barrier, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(30)
        counts = [results.get(timeout=30) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    assert sum(counts) == 100, counts
    assert all(20 <= count <= 80 for count in counts), counts


# Redis outages, private server ----------------------------------------------------------------


def test_redis_fail_open_allows_counts_warns_once_and_recovers(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    rate = Rate(3, 60)
    cooldown = 0.05

    async def scenario() -> None:
        limiter = RedisRateLimiter(private_redis.url, fail_open=True, cooldown_seconds=cooldown)
        try:
            assert await _allowed(limiter, "b", rate, 4) == [True, True, True, False]

            private_redis.kill()
            before = _metric("berth_rate_limit_backend_errors_total")
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="berth.security"):
                decisions = [await limiter.hit("b", rate) for _ in range(5)]
                await asyncio.sleep(cooldown * 2)
                decisions.append(await limiter.hit("b", rate))  # probes, fails again
            assert time.monotonic() - started < 1.0  # a dead Redis does not stall requests
            assert all(d.allowed for d in decisions)
            assert _metric("berth_rate_limit_backend_errors_total") == before + 6
            warnings = [r for r in caplog.records if r.name == "berth.security"]
            assert len(warnings) == 1  # at most one per 10 s
            assert "Redis is unreachable" in warnings[0].getMessage()

            private_redis.start()  # same port, empty, and no cached script (NOSCRIPT path)
            await asyncio.sleep(cooldown * 2)
            back = await limiter.hit("b", rate)
            assert back.allowed
            assert back.remaining == 2  # counted by Redis again, not waved through
            assert await _allowed(limiter, "b", rate, 3) == [True, True, False]
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_redis_fail_closed_raises_not_ready_and_recovers(private_redis: PrivateRedis) -> None:
    rate = Rate(2, 60)
    cooldown = 0.05

    async def scenario() -> None:
        limiter = RedisRateLimiter(private_redis.url, fail_open=False, cooldown_seconds=cooldown)
        try:
            assert await _allowed(limiter, "b", rate, 3) == [True, True, False]

            private_redis.kill()
            before = _metric("berth_rate_limit_backend_errors_total")
            for _ in range(3):
                with pytest.raises(NotReady) as caught:
                    await limiter.hit("b", rate)
                assert caught.value.message == (
                    "rate limiting is unavailable (Redis unreachable); retry shortly"
                )
                assert caught.value.retry_after == 1
            assert _metric("berth_rate_limit_backend_errors_total") == before + 3
            with pytest.raises(NotReady):
                await check(limiter, [("key", "b", rate)])

            private_redis.start()
            await asyncio.sleep(cooldown * 2)
            assert await _allowed(limiter, "b", rate, 3) == [True, True, False]
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_redis_reloads_a_flushed_script(private_redis: PrivateRedis) -> None:
    rate = Rate(3, 60)
    admin = redis.Redis(port=private_redis.port)

    async def scenario() -> None:
        limiter = RedisRateLimiter(private_redis.url, fail_open=False)
        try:
            assert await _allowed(limiter, "b", rate, 1) == [True]
            admin.script_flush()
            assert await _allowed(limiter, "b", rate, 3) == [True, True, False]
        finally:
            await limiter.close()

    try:
        asyncio.run(scenario())
    finally:
        admin.close()


def test_redis_that_never_answers_costs_one_read_timeout_per_cooldown() -> None:
    # A listening socket that never replies: connects succeed, reads time out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", free_port()))
        silent.listen(64)
        port = silent.getsockname()[1]

        async def scenario() -> list[float]:
            limiter = RedisRateLimiter(
                f"redis://127.0.0.1:{port}/0", fail_open=True, read_timeout=0.2
            )
            try:
                took = []
                for _ in range(5):
                    started = time.monotonic()
                    assert (await limiter.hit("b", Rate(1, 60))).allowed
                    took.append(time.monotonic() - started)
                return took
            finally:
                await limiter.close()

        took = asyncio.run(scenario())
    assert 0.15 < took[0] < 0.6  # one read timeout, not retried
    assert max(took[1:]) < 0.05  # then left alone for the cooldown
