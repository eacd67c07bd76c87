"""A loaded version's call chain on its own: only the wrappers that are on are composed, and each
keeps its promise (the cache answers repeats, the timeout bounds calls in threads and leaves calls
on the loop alone, small requests share a batch, a slow call on the loop moves to threads)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pytest
from anyio import CapacityLimiter

from berth.config import ModelServing
from berth.errors import TimedOut
from berth.registry.artifacts import StoredArtifact
from berth.registry.signature import Signature, TensorSpec
from berth.registry.versions import VersionInfo
from berth.runtimes.base import ModelInput, Prediction, row_count
from berth.serving.cache import MemoryCache
from berth.serving.chain.batching import Batching, Unbatched
from berth.serving.chain.caching import Caching
from berth.serving.chain.call import CallContext
from berth.serving.chain.compose import Chain, compose
from berth.serving.chain.timeout import Timeout
from berth.serving.config import ServingConfig


@dataclass
class Doubler:
    """Answers twice each row's first value; records the rows of every call."""

    flavor: str = "sklearn"
    delay: float = 0.0
    calls: list[int] = field(default_factory=list)

    def predict(self, inputs: ModelInput) -> Prediction:
        self.calls.append(row_count(inputs))
        time.sleep(self.delay)
        assert isinstance(inputs, np.ndarray)
        return Prediction(predictions=inputs[:, 0] * 2)

    def declared_signature(self) -> Signature | None:
        return None


def _info() -> VersionInfo:
    return VersionInfo(
        model=f"chain-{uuid.uuid4().hex[:8]}",  # metrics of one test never meet another's
        number=1,
        flavor="sklearn",
        artifact=StoredArtifact("0" * 64, "memory://x", "", False, 0),
        signature=Signature("tensor", inputs=(TensorSpec("x", "float64", (-1, 2)),)),
        metrics={},
        tags={},
        description="",
        created_at=datetime.now(UTC),
    )


def _chain(
    runtime: Doubler,
    *,
    options: ModelServing | None = None,
    timeout: float | None = None,
    inline: bool = False,
    cache: MemoryCache | None = None,
) -> Chain:
    config = ServingConfig(timeout_seconds=timeout, inline_seconds=1.0 if inline else 0.0)
    return compose(
        runtime,
        _info(),
        options or ModelServing(),
        0.0001,
        config,
        limiter=CapacityLimiter(2),
        cache=cache,
        background=set(),
    )


def _rows(*firsts: float) -> np.ndarray:
    return np.array([[first, 0.0] for first in firsts])


async def _predict(chain: Chain, inputs: np.ndarray) -> tuple[list[float], bool | None]:
    context = CallContext(row_count(inputs))
    prediction = await chain.predict(inputs, context)
    return prediction.predictions.tolist(), context.cached


def test_only_the_wrappers_that_are_on_are_composed() -> None:
    bare = _chain(Doubler())
    assert isinstance(bare.predict, Unbatched)
    assert bare.predict is bare.infer
    assert bare.batcher is None
    full = _chain(
        Doubler(),
        options=ModelServing(max_batch_size=4, cache=True),
        timeout=5.0,
        cache=MemoryCache(max_bytes=10_000, ttl_seconds=60),
    )
    assert isinstance(full.predict, Caching)
    assert isinstance(full.infer, Timeout)
    assert full.batcher is not None
    # caching needs both a cache and the model's option
    assert isinstance(_chain(Doubler(), options=ModelServing(cache=True)).predict, Unbatched)


def test_the_cache_answers_a_repeat_and_the_shadow_path_skips_it() -> None:
    runtime = Doubler()
    chain = _chain(
        runtime,
        options=ModelServing(cache=True),
        cache=MemoryCache(max_bytes=10_000, ttl_seconds=60),
    )

    async def scenario() -> list[tuple[list[float], bool | None]]:
        first = await _predict(chain, _rows(1.0))
        await asyncio.sleep(0)  # the store runs after the answer
        second = await _predict(chain, _rows(1.0))
        context = CallContext(1)
        await chain.infer(_rows(1.0), context)
        return [first, second, ([], context.cached)]

    assert asyncio.run(scenario()) == [([2.0], False), ([2.0], True), ([], None)]
    assert runtime.calls == [1, 1]  # the miss, and the uncached path


def test_the_timeout_bounds_calls_in_threads_only() -> None:
    async def scenario(inline: bool) -> list[float]:
        chain = _chain(Doubler(delay=0.2), timeout=0.05, inline=inline)
        return (await _predict(chain, _rows(3.0)))[0]

    with pytest.raises(TimedOut, match=r"did not answer within 0\.05 s"):
        asyncio.run(scenario(inline=False))
    assert asyncio.run(scenario(inline=True)) == [6.0]  # nothing can interrupt the loop


def test_a_slow_call_on_the_loop_moves_the_version_to_threads() -> None:
    runtime = Doubler()
    chain = _chain(runtime, inline=True)
    assert chain.runtime.inline
    asyncio.run(_predict(chain, _rows(1.0)))
    assert chain.runtime.inline
    runtime.delay = 0.2
    asyncio.run(_predict(chain, _rows(1.0)))
    assert not chain.runtime.inline
    assert not chain.runtime.runs_inline(1)


def test_small_requests_share_a_batch_and_a_full_one_goes_alone() -> None:
    runtime = Doubler()
    chain = _chain(runtime, options=ModelServing(max_batch_size=4, max_latency_ms=50))
    assert isinstance(chain.predict, Batching)

    async def scenario() -> list[list[float]]:
        small = await asyncio.gather(*(_predict(chain, _rows(n)) for n in (1.0, 2.0, 3.0)))
        full = await _predict(chain, _rows(4.0, 5.0, 6.0, 7.0))
        return [answer for answer, _cached in (*small, full)]

    assert asyncio.run(scenario()) == [[2.0], [4.0], [6.0], [8.0, 10.0, 12.0, 14.0]]
    assert runtime.calls == [3, 4]
