"""Rates from running totals: requests per second and recent latency, as the console shows them.

The route statistics in the registry are running totals, the same for every replica to read; a
rate needs two readings apart in time. Each process keeps the readings its pages made (at most one
a second, for a quarter of an hour), so the first view of a page shows totals and the numbers
that follow (the live fragments poll every few seconds) show rates over the last minute.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from berth.serving.route_window import RouteWindow

KEEP_SECONDS = 15 * 60
RATE_SECONDS = 60.0
"""Rates and recent latencies are taken over about this much time."""
MIN_GAP_SECONDS = 1.0


@dataclass(frozen=True)
class Rate:
    seconds: float
    window: RouteWindow

    @property
    def per_second(self) -> float:
        return self.window.requests / self.seconds

    @property
    def p99_ms(self) -> float | None:
        p99 = self.window.latency_quantile(0.99)
        return None if p99 is None else p99 * 1000


@dataclass(frozen=True)
class Point:
    """One step of a chart: when, requests per second and p99 over the step."""

    at: float
    per_second: float
    p99_ms: float | None


class TrafficHistory:
    """Readings of running totals per key (an endpoint, or "" for everything)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._readings: dict[str, deque[tuple[float, RouteWindow]]] = {}

    def note(self, key: str, totals: RouteWindow) -> None:
        now = self.clock()
        readings = self._readings.setdefault(key, deque())
        if readings and now - readings[-1][0] < MIN_GAP_SECONDS:
            return
        readings.append((now, totals))
        while readings and now - readings[0][0] > KEEP_SECONDS:
            readings.popleft()

    def rate(self, key: str, seconds: float = RATE_SECONDS) -> Rate | None:
        """Traffic between the newest reading and the oldest one within `seconds` of it."""
        readings = self._readings.get(key)
        if not readings or len(readings) < 2:
            return None
        newest_at, newest = readings[-1]
        start_at, start = next(
            ((at, w) for at, w in readings if newest_at - at <= seconds), readings[-2]
        )
        if start_at >= newest_at:
            start_at, start = readings[-2]
        return Rate(newest_at - start_at, newest.minus(start))

    def points(self, key: str) -> list[Point]:
        readings = list(self._readings.get(key, ()))
        found = []
        for (before_at, before), (at, now) in itertools.pairwise(readings):
            rate = Rate(at - before_at, now.minus(before))
            found.append(Point(at, rate.per_second, rate.p99_ms))
        return found
