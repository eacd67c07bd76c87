"""The request timeout in the chain: a call that has not answered in time (waiting for its batch
included) fails with `TimedOut` (504); a call running in a thread is abandoned, not stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from berth.errors import TimedOut
from berth.runtimes.base import ModelInput, Prediction
from berth.serving.chain.call import CallContext, ModelCall


class Timeout:
    def __init__(
        self,
        inner: ModelCall,
        seconds: float,
        ref: str,
        runs_inline: Callable[[int], bool],
    ) -> None:
        """`runs_inline(rows)`: whether a call of that many rows would run on the event loop.
        Such a call is not bounded (nor its wait for a batch): nothing could interrupt it, and
        the bound costs a task."""
        self._inner = inner
        self._seconds = seconds
        self._ref = ref
        self._runs_inline = runs_inline

    def __call__(self, inputs: ModelInput, context: CallContext) -> Awaitable[Prediction]:
        if self._runs_inline(context.rows):
            return self._inner(inputs, context)
        return self._bounded(inputs, context)

    async def _bounded(self, inputs: ModelInput, context: CallContext) -> Prediction:
        try:
            return await asyncio.wait_for(self._inner(inputs, context), self._seconds)
        except TimeoutError as exc:
            raise TimedOut(
                f"{self._ref} did not answer within {self._seconds:g} s; send fewer "
                "rows per request, or raise BERTH_REQUEST_TIMEOUT_SECONDS"
            ) from exc
