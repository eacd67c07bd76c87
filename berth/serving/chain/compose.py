"""Compose a loaded version's chain once, when it loads, from its options and the serving config."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from anyio import CapacityLimiter

from berth.config import ModelServing
from berth.registry.versions import VersionInfo
from berth.runtimes.base import Runtime
from berth.serving.batcher import Batcher
from berth.serving.cache import PredictionCache
from berth.serving.chain.batching import Batching, Unbatched
from berth.serving.chain.caching import Caching
from berth.serving.chain.call import ModelCall
from berth.serving.chain.runtime_call import RuntimeCall, fast_enough
from berth.serving.chain.timeout import Timeout
from berth.serving.config import ServingConfig


@dataclass(frozen=True)
class Chain:
    """The calls of one loaded version."""

    predict: ModelCall
    """What a request goes through: cache, timeout, batcher, runtime (each when on)."""
    infer: ModelCall
    """The same without the cache: a mirrored request must reach the model."""
    runtime: RuntimeCall
    """The innermost call; it knows whether the version predicts on the event loop."""
    batcher: Batcher | None
    """The version's batcher, when batching is on for its model."""


def compose(
    runtime: Runtime,
    info: VersionInfo,
    options: ModelServing,
    row_seconds: float,
    config: ServingConfig,
    *,
    limiter: CapacityLimiter,
    cache: PredictionCache | None,
    background: set[asyncio.Task[None]],
) -> Chain:
    """`row_seconds`: one row's prediction time measured at warm-up; `limiter`: the worker
    threads model calls share; `background`: where cache stores in flight are kept."""
    labels = (info.model, str(info.number))
    inline = fast_enough(info.flavor, row_seconds, config.inline_seconds)
    innermost = RuntimeCall(runtime, info.ref, inline=inline, limiter=limiter)
    batcher = None
    call: ModelCall
    if options.batching:
        batching = Batching(innermost, options, labels)
        call, batcher = batching, batching.batcher
    else:
        call = Unbatched(innermost, labels)
    if config.timeout_seconds is not None:
        call = Timeout(call, config.timeout_seconds, info.ref, innermost.runs_inline)
    predict: ModelCall = call
    if cache is not None and options.cache:
        predict = Caching(call, cache, info, background)
    return Chain(predict=predict, infer=call, runtime=innermost, batcher=batcher)
