"""Decoding work placed by its size: on the event loop, in a thread, or in a helper process.

A small request body decodes faster than a thread hop, so it stays on the loop. A larger one
goes to a thread. But a thread does not free the loop from the largest bodies: parsing JSON
(orjson) and building arrays from Python lists (numpy) are single C calls that hold the GIL
from start to end, so a 16 MB body stalled every other request of the worker for up to 1.7 s.
Bodies from `process_bytes` up are therefore decoded in a helper process, one per worker,
started on first use; only the decoded arrays (a memory copy) come back.

Work can go to the process only when it is *portable*: a module-level function whose arguments
pickle cheaply (bytes, plain values, signatures). Everything else uses a thread.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from prometheus_client import Counter

from berth.errors import NotReady
from berth.observability import tracing

log = logging.getLogger("berth.serving")

T = TypeVar("T")

INLINE_BYTES = 64 * 1024
"""Work on inputs up to this size runs on the event loop (a thread hop costs more)."""

DECODES = Counter(
    "berth_request_decodes",
    "Request bodies decoded, by where the work ran: loop, thread or process.",
    ["where"],
)


class Offloader:
    def __init__(self, process_bytes: int = 0, limiter: CapacityLimiter | None = None) -> None:
        """`process_bytes`: inputs this large go to the helper process (0: never)."""
        self.process_bytes = process_bytes
        self.limiter = limiter
        self._executor: ProcessPoolExecutor | None = None
        self._started: Future[None] | None = None
        self._meters = {where: DECODES.labels(where) for where in ("loop", "thread", "process")}

    async def run(
        self,
        size: int,
        work: Callable[..., T],
        *args: Any,
        portable: bool = False,
        span: str = "decode",
    ) -> T:
        """`work(*args)`, placed by `size` (the input's byte length), traced as `span`."""
        if size <= INLINE_BYTES:
            self._meters["loop"].inc()
            with tracing.span(span):
                return work(*args)
        if portable and 0 < self.process_bytes <= size and self._helper_ready():
            self._meters["process"].inc()
            with tracing.span(span, **{"berth.decode": "process"}):
                return await self._in_process(work, *args)
        self._meters["thread"].inc()
        return await anyio.to_thread.run_sync(_traced, span, work, *args, limiter=self.limiter)

    def _helper_ready(self) -> bool:
        """Whether the helper process has started; if not, start it (in the background).

        Until it has (a second or two of imports), large bodies go to threads as before: the
        first one does not wait for the helper to boot.
        """
        if self._executor is None:
            # spawn: a fresh interpreter; forking a process that runs threads and an event loop
            # can copy held locks into the child.
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
            self._started = self._executor.submit(_warm_up)
        return self._started is not None and self._started.done()

    async def _in_process(self, work: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        assert executor is not None
        try:
            return await asyncio.wrap_future(executor.submit(work, *args))
        except BrokenProcessPool as exc:
            # The helper died (killed, out of memory): the next large body starts a new one.
            log.error("the decoding process stopped: %s; starting a new one on next use", exc)
            if self._executor is executor:
                self._executor = self._started = None
            executor.shutdown(wait=False, cancel_futures=True)
            raise NotReady("the request could not be decoded this time; retry it") from exc

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._started = None


def _warm_up() -> None:
    """Import what decoding needs (numpy, pandas), so the first body sent to the helper does not
    pay for it."""
    import berth.serving.validation  # noqa: F401


def _traced(span: str, work: Callable[..., T], *args: Any) -> T:
    """Runs in a worker thread (which carries the request's trace context)."""
    with tracing.span(span):
        return work(*args)
