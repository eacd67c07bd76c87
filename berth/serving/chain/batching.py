"""Batching in the chain: small requests join others in the version's `Batcher`; the rest, and
every request of a version without batching, are one model call each.

Either way each model call is counted in `berth_batch_size` once, by the rows it held: the
batcher counts the batches it makes, `Unbatched` a request called alone.
"""

from __future__ import annotations

from collections.abc import Awaitable

from berth.config import ModelServing
from berth.observability import metrics
from berth.runtimes.base import ModelInput, Prediction, row_count
from berth.serving.batcher import Batcher
from berth.serving.chain.call import CallContext, ModelCall


class Unbatched:
    """Each request is a model call of its own."""

    def __init__(self, inner: ModelCall, labels: tuple[str, str]) -> None:
        self._inner = inner
        self._sizes = metrics.BATCH_SIZE.labels(*labels)

    def __call__(self, inputs: ModelInput, context: CallContext) -> Awaitable[Prediction]:
        self._sizes.observe(context.rows)
        return self._inner(inputs, context)


class Batching:
    """Requests of fewer rows than a batch holds join a batch; larger ones are called alone."""

    def __init__(self, inner: ModelCall, options: ModelServing, labels: tuple[str, str]) -> None:
        self.batcher = Batcher(
            lambda inputs: inner(inputs, CallContext(row_count(inputs))),
            max_batch_size=options.max_batch_size,
            max_latency_seconds=options.max_latency_ms / 1000,
            max_in_flight=options.max_batches_in_flight,
            labels=labels,
        )
        self._alone = Unbatched(inner, labels)

    def __call__(self, inputs: ModelInput, context: CallContext) -> Awaitable[Prediction]:
        if context.rows < self.batcher.max_batch_size:
            return self.batcher.submit(inputs)  # it records the size of the batches it makes
        return self._alone(inputs, context)
