"""The consumer loop: collect a micro-batch, score it, settle it (write, then acknowledge).

One batch is in flight at a time, so at most `batch_size` entries are read and unacknowledged
at any moment: the bound on what a crash can make the broker deliver twice.

Stopping (`stop` set, by SIGTERM or SIGINT) ends the loop between batches: the batch being
collected or scored is finished, written and acknowledged first, then `run` returns.

A broker that fails mid-way (connection lost, a write refused) costs no event: the batch in
hand is dropped unacknowledged, the loop waits (1 s, doubling up to 30 s) and reads again, this
consumer's unacknowledged entries first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from berth.jobs.stream.events import Received, Rejected, dead_letter, outputs, utc_now
from berth.jobs.stream.metrics import Meters
from berth.jobs.stream.micro_batch import MicroBatch, Outcome
from berth.jobs.stream.transport import BrokerUnavailable, Sink, Source

log = logging.getLogger("berth.stream")

POLL_SECONDS = 0.5
"""Longest wait for a first entry; bounds how long a stop request waits for an idle read."""
RETRY_SECONDS = (1.0, 30.0)


@dataclass(frozen=True)
class Batching:
    size: int
    max_wait_seconds: float


class Consumer:
    def __init__(
        self,
        source: Source,
        sink: Sink,
        dead_letters: Sink,
        scorer: MicroBatch,
        batching: Batching,
        meters: Meters,
    ) -> None:
        self.source = source
        self.sink = sink
        self.dead_letters = dead_letters
        self.scorer = scorer
        self.batching = batching
        self.meters = meters

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                batch = await self._collect(stop)
                if batch:
                    await self._handle(batch)
                failures = 0
            except BrokerUnavailable as exc:
                failures += 1
                delay = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                log.error(
                    "%s; trying again in %.0f s (entries not acknowledged are read again)",
                    exc.message,
                    delay,
                )
                if stop.is_set():
                    raise
                await _sleep_unless(stop, delay)

    async def _collect(self, stop: asyncio.Event) -> list[Received]:
        """Up to `size` entries; after the first arrives, wait at most `max_wait` for more."""
        size = self.batching.size
        batch = await self.source.read(size, POLL_SECONDS)
        if not batch:
            return []
        seen = {r.transport_id for r in batch}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batching.max_wait_seconds
        while len(batch) < size and not stop.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            more = await self.source.read(size - len(batch), remaining)
            # A claim can hand back an entry already in hand: one copy per batch.
            batch += [r for r in more if r.transport_id not in seen]
            seen.update(r.transport_id for r in more)
            if not more:
                break
        return batch

    async def _handle(self, batch: list[Received]) -> None:
        started = time.perf_counter()
        self.meters.received(len(batch))
        outcome = await self.scorer.score(batch)
        now = utc_now()
        records = [
            record
            for scored in outcome.scored
            for record in outputs(
                scored.events,
                scored.result.version,
                scored.result.prediction,
                now,
                scored.result.endpoint,
                scored.result.route,
            )
        ]
        dead = [
            dead_letter(r, self.source.display, self.scorer.reference, now)
            for r in outcome.rejected
        ]
        await self.source.settle(batch, [(self.sink, records), (self.dead_letters, dead)])
        self.meters.settled(outcome.scored_events, len(dead), time.perf_counter() - started)
        if outcome.rejected:
            _log_rejected(outcome, self.dead_letters)


def _log_rejected(outcome: Outcome, dead_letters: Sink) -> None:
    first: Rejected = outcome.rejected[0]
    log.warning(
        "%d of %d events went to the dead-letter stream %s (first: %s: %s)",
        len(outcome.rejected),
        len(outcome.rejected) + outcome.scored_events,
        dead_letters.name,
        first.id,
        first.reason,
    )


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
