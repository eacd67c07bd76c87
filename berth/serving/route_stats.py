"""Per-route traffic totals, shared through the registry database.

Each server process counts requests, server-side errors and latencies per (endpoint, version)
in memory (a few additions per request, no lock needed on the event loop) and upserts its
running totals into `route_stats` about once a second. Summed over processes, the rows are the
endpoint's traffic across every worker and replica: what the rollout controller judges and the
experiment report counts, from any process (the CLI too), without a Prometheus server.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import delete, func, select, update

from berth.observability import metrics
from berth.observability.metrics import LATENCY_BUCKETS
from berth.registry.endpoints import EndpointInfo, RouteSpec
from berth.serving.route_window import RouteWindow
from berth.store.db import Database
from berth.store.tables import RouteStatsRow, utcnow

log = logging.getLogger("berth.serving")

RouteKey = tuple[str, str, int]
"""(endpoint, model, version)"""
RETENTION = timedelta(days=7)


def process_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Totals:
    requests: int = 0
    errors: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    shadow_compared: int = 0
    shadow_agreed: int = 0
    shadow_seconds_delta: float = 0.0


class RouteStats:
    """This process's totals, and the loop that writes them."""

    def __init__(self, db: Database | None, interval: float = 1.0) -> None:
        self.db = db
        self.interval = interval
        self.process = process_id()
        self._totals: dict[RouteKey, _Totals] = {}
        self._dirty: set[RouteKey] = set()
        self._counters: dict[tuple[RouteKey, bool], Any] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, key: RouteKey, seconds: float, error: bool) -> None:
        counter = self._counters.get((key, error))
        if counter is None:
            outcome = "error" if error else "ok"
            counter = self._counters[(key, error)] = metrics.ROUTE_REQUESTS.labels(
                key[0], key[1], str(key[2]), outcome
            )
        counter.inc()
        totals = self._get(key)
        totals.requests += 1
        if error:
            totals.errors += 1
        else:
            totals.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            totals.latency_sum += seconds

    def record_shadow(
        self, key: RouteKey, compared: int, agreed: int, seconds_delta: float
    ) -> None:
        totals = self._get(key)
        totals.shadow_compared += compared
        totals.shadow_agreed += agreed
        totals.shadow_seconds_delta += seconds_delta

    def _get(self, key: RouteKey) -> _Totals:
        self._dirty.add(key)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = _Totals()
        return totals

    def start(self) -> None:
        if self.db is not None and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        if self.db is None or not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        rows = [(key, _copy(self._totals[key])) for key in keys]
        try:
            await anyio.to_thread.run_sync(self.write, rows)
        except Exception:
            self._dirty |= keys  # written with the next flush
            raise

    async def _run(self) -> None:
        assert self.db is not None
        try:
            await anyio.to_thread.run_sync(prune, self.db)
        except Exception:
            log.exception("pruning old route statistics failed")
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing route statistics failed; retrying in %.0f s", self.interval)

    def write(self, rows: Iterable[tuple[RouteKey, _Totals]]) -> None:
        assert self.db is not None
        now = utcnow()
        with self.db.session() as session:
            for (endpoint, model, version), totals in rows:
                values = {
                    "requests": totals.requests,
                    "errors": totals.errors,
                    "latency_counts": totals.latency_counts,
                    "latency_sum": totals.latency_sum,
                    "shadow_compared": totals.shadow_compared,
                    "shadow_agreed": totals.shadow_agreed,
                    "shadow_seconds_delta": totals.shadow_seconds_delta,
                    "updated_at": now,
                }
                # Only this process writes its rows: update-else-insert cannot race.
                changed = session.execute(
                    update(RouteStatsRow)
                    .where(
                        RouteStatsRow.process == self.process,
                        RouteStatsRow.endpoint == endpoint,
                        RouteStatsRow.model == model,
                        RouteStatsRow.version == version,
                    )
                    .values(**values)
                )
                if getattr(changed, "rowcount", 0) == 0:
                    session.add(
                        RouteStatsRow(
                            process=self.process,
                            endpoint=endpoint,
                            model=model,
                            version=version,
                            **values,
                        )
                    )


def _copy(totals: _Totals) -> _Totals:
    """A snapshot to write from a thread while the loop keeps counting (the list is shared)."""
    return replace(totals, latency_counts=list(totals.latency_counts))


@dataclass(frozen=True)
class ShadowTotals:
    compared: int
    agreed: int
    seconds_delta: float
    mirrored: int
    """Mirrored requests the shadow answered (the delta is summed over these)."""

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def mean_delta_ms(self) -> float | None:
        return self.seconds_delta / self.mirrored * 1000 if self.mirrored else None


def read_totals(db: Database, endpoint: str) -> dict[tuple[str, int], RouteWindow]:
    """Running totals per (model, version) of an endpoint, summed over every process."""
    found: dict[tuple[str, int], RouteWindow] = {}
    with db.session() as session:
        rows = session.scalars(select(RouteStatsRow).where(RouteStatsRow.endpoint == endpoint))
        for row in rows:
            window = RouteWindow(
                requests=row.requests,
                errors=row.errors,
                latency_counts=tuple(row.latency_counts),
                latency_sum=row.latency_sum,
            )
            key = (row.model, row.version)
            found[key] = _add(found[key], window) if key in found else window
    return found


def read_all_totals(db: Database) -> dict[str, dict[tuple[str, int], RouteWindow]]:
    """`read_totals` of every endpoint at once (one query, for an overview)."""
    found: dict[str, dict[tuple[str, int], RouteWindow]] = {}
    with db.session() as session:
        for row in session.scalars(select(RouteStatsRow)):
            window = RouteWindow(
                requests=row.requests,
                errors=row.errors,
                latency_counts=tuple(row.latency_counts),
                latency_sum=row.latency_sum,
            )
            routes = found.setdefault(row.endpoint, {})
            key = (row.model, row.version)
            routes[key] = _add(routes[key], window) if key in routes else window
    return found


def combined(windows: Iterable[RouteWindow]) -> RouteWindow:
    """Several windows as one (an endpoint's routes, or every endpoint)."""
    total = RouteWindow()
    for window in windows:
        total = _add(total, window)
    return total


def processes_seen(db: Database, within: timedelta) -> int:
    """Serving processes (workers of every replica) that wrote their totals within `within`."""
    since = utcnow() - within
    with db.session() as session:
        found = session.scalar(
            select(func.count(func.distinct(RouteStatsRow.process))).where(
                RouteStatsRow.updated_at >= since
            )
        )
    return int(found or 0)


def read_shadow(db: Database, endpoint: str) -> dict[tuple[str, int], ShadowTotals]:
    with db.session() as session:
        rows = session.execute(
            select(
                RouteStatsRow.model,
                RouteStatsRow.version,
                func.sum(RouteStatsRow.shadow_compared),
                func.sum(RouteStatsRow.shadow_agreed),
                func.sum(RouteStatsRow.shadow_seconds_delta),
                func.sum(RouteStatsRow.requests) - func.sum(RouteStatsRow.errors),
            )
            .where(RouteStatsRow.endpoint == endpoint, RouteStatsRow.shadow_compared > 0)
            .group_by(RouteStatsRow.model, RouteStatsRow.version)
        ).all()
    return {
        (model, version): ShadowTotals(int(c or 0), int(a or 0), float(d or 0.0), int(n or 0))
        for model, version, c, a, d, n in rows
    }


def prune(db: Database, now: datetime | None = None) -> int:
    """Forget processes that stopped writing long ago."""
    cutoff = (now or utcnow()) - RETENTION
    with db.session() as session:
        result = session.execute(delete(RouteStatsRow).where(RouteStatsRow.updated_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)


def _add(a: RouteWindow, b: RouteWindow) -> RouteWindow:
    counts = (
        tuple(x + y for x, y in zip(a.latency_counts, b.latency_counts, strict=True))
        if a.latency_counts and b.latency_counts
        else a.latency_counts or b.latency_counts
    )
    return RouteWindow(
        requests=a.requests + b.requests,
        errors=a.errors + b.errors,
        latency_counts=counts,
        latency_sum=a.latency_sum + b.latency_sum,
    )


# documents (the CLI and the admin API show the same) ----------------------------------


def stats_document(
    info: EndpointInfo,
    totals: dict[tuple[str, int], RouteWindow],
    shadows: dict[tuple[str, int], ShadowTotals],
) -> dict[str, Any]:
    """Live traffic per routed version, and the shadow's agreement, as JSON."""
    versions = []
    for route in info.routes:
        window = totals.get((route.model, route.version), RouteWindow())
        versions.append({"label": route.label, **window_document(route, window)})
    shadow = info.with_role("shadow")
    found = shadows.get((shadow.model, shadow.version)) if shadow is not None else None
    return {"versions": versions, "shadow": shadow_document(shadow, found)}


def window_document(route: RouteSpec, window: RouteWindow) -> dict[str, Any]:
    mean = window.mean_latency_seconds
    p99 = window.latency_quantile(0.99)
    return {
        "model": route.model,
        "version": route.version,
        "requests": window.requests,
        "errors": window.errors,
        "error_rate": window.error_rate,
        "mean_latency_ms": None if mean is None else mean * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
    }


def shadow_document(shadow: RouteSpec | None, found: ShadowTotals | None) -> dict[str, Any] | None:
    if shadow is None:
        return None
    return {
        "model": shadow.model,
        "version": shadow.version,
        "percent": shadow.weight,
        "compared": found.compared if found else 0,
        "agreed": found.agreed if found else 0,
        "agreement": found.agreement if found else None,
        "mean_latency_delta_ms": found.mean_delta_ms if found else None,
    }
