"""The prediction cache in the chain: a repeated input of a cached model is answered from the
cache, without calling the model (see `berth.serving.cache` for keys, values and backends).

Lookups are counted per model as hits or misses; an input that has no exact key (`NotCacheable`)
goes to the model uncounted, and its answer says nothing of the cache (`cached` stays None).
"""

from __future__ import annotations

import asyncio

from berth.observability import metrics
from berth.registry.versions import VersionInfo
from berth.runtimes.base import ModelInput, Prediction
from berth.serving.cache import PredictionCache
from berth.serving.cache_keys import NotCacheable, cache_key
from berth.serving.chain.call import CallContext, ModelCall


class Caching:
    def __init__(
        self,
        inner: ModelCall,
        cache: PredictionCache,
        info: VersionInfo,
        background: set[asyncio.Task[None]],
    ) -> None:
        """`background`: where stores in flight are kept, for the owner to await at shutdown."""
        self._inner = inner
        self._cache = cache
        self._model = info.model
        self._number = info.number
        self._artifact = info.artifact.sha256
        self._hits = metrics.CACHE_LOOKUPS.labels(info.model, "hit")
        self._misses = metrics.CACHE_LOOKUPS.labels(info.model, "miss")
        self._background = background

    async def __call__(self, inputs: ModelInput, context: CallContext) -> Prediction:
        try:
            key = cache_key(self._model, self._number, inputs, self._artifact)
        except NotCacheable:
            return await self._inner(inputs, context)
        found = await self._cache.get(key)
        if found is not None:
            self._hits.inc()
            context.cached = True
            return found
        self._misses.inc()
        prediction = await self._inner(inputs, context)
        # Storing must not delay the answer (with Redis it is a network round trip).
        task = asyncio.create_task(self._cache.put(key, prediction))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        context.cached = False
        return prediction
