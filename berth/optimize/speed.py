"""How fast a runtime predicts, in process: milliseconds per call at a batch size.

Each measurement warms up, then calls `predict` on the same batch until a time budget is spent
(at least `MIN_CALLS` times) and keeps the median, which a stray slow call does not move.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from berth.optimize.data import CheckData
from berth.runtimes.base import ModelInput, Runtime

BATCHES = (1, 64)
BUDGET_SECONDS = 0.25
"""Time spent measuring one runtime at one batch size."""
WARMUP_CALLS = 3
MIN_CALLS = 5
MAX_CALLS = 5_000


@dataclass(frozen=True)
class Timing:
    batch: int
    source_ms: float
    optimized_ms: float

    @property
    def speedup(self) -> float:
        return self.source_ms / self.optimized_ms if self.optimized_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "source_ms": round(self.source_ms, 4),
            "optimized_ms": round(self.optimized_ms, 4),
            "speedup": round(self.speedup, 2) if math.isfinite(self.speedup) else None,
        }


@dataclass(frozen=True)
class SpeedReport:
    timings: tuple[Timing, ...]

    def to_dict(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.timings]


def compare(
    source: Runtime,
    optimized: Runtime,
    data: CheckData,
    *,
    batches: tuple[int, ...] = BATCHES,
    budget_seconds: float | None = None,
) -> SpeedReport:
    """Milliseconds per call of both runtimes on batches of the check rows.

    `budget_seconds` per runtime and batch size; default `BUDGET_SECONDS`, read at call time.
    """
    budget = BUDGET_SECONDS if budget_seconds is None else budget_seconds
    timings = []
    for batch in batches:
        inputs = data.take(np.arange(batch) % data.rows)
        timings.append(
            Timing(
                batch,
                ms_per_call(source, inputs, budget),
                ms_per_call(optimized, inputs, budget),
            )
        )
    return SpeedReport(tuple(timings))


def ms_per_call(runtime: Runtime, inputs: ModelInput, budget_seconds: float) -> float:
    for _ in range(WARMUP_CALLS):
        runtime.predict(inputs)
    durations: list[float] = []
    deadline = time.perf_counter() + budget_seconds
    while len(durations) < MIN_CALLS or (
        time.perf_counter() < deadline and len(durations) < MAX_CALLS
    ):
        started = time.perf_counter()
        runtime.predict(inputs)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1000
