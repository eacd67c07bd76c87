"""The innermost call: the runtime's own `predict`, on the event loop for fast models, else in a
worker thread.

A thread hop costs more than a fast model's prediction, so a version whose one-row prediction
was measured fast at load predicts small inputs on the event loop. Should one such call turn
out slow after all, the version predicts in threads from then on.
"""

from __future__ import annotations

import logging
import time

import anyio.to_thread
from anyio import CapacityLimiter

from berth.observability import tracing
from berth.runtimes.base import ModelInput, Prediction, Runtime, row_count
from berth.serving.chain.call import CallContext

log = logging.getLogger("berth.serving")

INLINE_MAX_ROWS = 256
"""Fast models predict on the event loop only for inputs up to this many rows."""
INLINE_FLAVORS = frozenset({"sklearn", "onnx"})
"""Flavors whose cost follows the row count; a user's Python class may sleep or call out."""
INLINE_GIVE_UP_CPU_SECONDS = 0.005
INLINE_GIVE_UP_WALL_SECONDS = 0.1


def fast_enough(flavor: str, row_seconds: float, inline_seconds: float) -> bool:
    """Whether a version starts on the event loop: its flavor's cost follows the rows, and one
    row predicted (measured at warm-up) in less than `inline_seconds`."""
    return flavor in INLINE_FLAVORS and row_seconds < inline_seconds


class RuntimeCall:
    """One version's runtime, called on the event loop or in a worker thread: what costs less."""

    def __init__(
        self, runtime: Runtime, ref: str, *, inline: bool, limiter: CapacityLimiter
    ) -> None:
        self.runtime = runtime
        self.ref = ref
        self.inline = inline
        """Fast enough to predict on the event loop: a thread hop would cost more than the model.
        Cleared for good if one call on the loop turns out slow (`INLINE_GIVE_UP_CPU_SECONDS` of
        CPU, or `INLINE_GIVE_UP_WALL_SECONDS` in all)."""
        self._limiter = limiter
        self._suspect = False
        """The last call on the loop took long by the wall clock: the next one reads CPU time."""

    def runs_inline(self, rows: int) -> bool:
        """Whether an input of `rows` rows would predict on the event loop now."""
        return self.inline and rows <= INLINE_MAX_ROWS

    async def __call__(self, inputs: ModelInput, context: CallContext) -> Prediction:
        if self.inline and context.rows <= INLINE_MAX_ROWS:
            return self._predict_inline(inputs, context.rows)
        return await anyio.to_thread.run_sync(
            _traced_predict,
            self.runtime,
            inputs,
            tracing.now_ns() if tracing.enabled() else 0,
            limiter=self._limiter,
            # On timeout the caller gets its answer now; the thread finishes on its own.
            abandon_on_cancel=True,
        )

    def _predict_inline(self, inputs: ModelInput, rows: int) -> Prediction:
        # Reading the thread's CPU clock is a system call that costs more than a fast model's
        # prediction on a loaded machine: it is read only after a call looked slow by the wall
        # clock, and the next call decides by its CPU time.
        suspect = self._suspect
        started = time.perf_counter()
        cpu_started = time.thread_time() if suspect else 0.0
        with tracing.span("inference", **{"berth.batch_size": rows}):
            prediction = self.runtime.predict(inputs)
        wall = time.perf_counter() - started
        self._suspect = wall > INLINE_GIVE_UP_CPU_SECONDS
        # CPU time, not wall time, is the model's own cost: under load the OS preempts the loop
        # for milliseconds at a time, which says nothing about the model.
        cpu = time.thread_time() - cpu_started if suspect else None
        if wall > INLINE_GIVE_UP_WALL_SECONDS or (cpu or 0.0) > INLINE_GIVE_UP_CPU_SECONDS:
            self.inline = False
            log.warning(
                "%s took %.1f ms%s on the event loop; it predicts in worker threads from now on",
                self.ref,
                wall * 1000,
                "" if cpu is None else f" ({cpu * 1000:.1f} ms of CPU)",
            )
        return prediction


def _traced_predict(runtime: Runtime, inputs: ModelInput, submitted_ns: int) -> Prediction:
    """Runs in a worker thread (which carries the request's trace context)."""
    if submitted_ns:
        tracing.record_interval("queue wait", submitted_ns, tracing.now_ns())
    with tracing.span("inference", **{"berth.batch_size": row_count(inputs)}):
        return runtime.predict(inputs)
