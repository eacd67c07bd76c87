"""The prediction log: one row per predicted row, written in batches off the hot path.

`PredictionLog.observe` is a dataplane observer. On the event loop it only appends the result
to a bounded in-memory buffer (counted in rows); a background task turns buffered results into
rows and inserts them, in one transaction per flush, in a worker thread, every `flush_seconds`
or as soon as `batch_rows` rows wait. When the buffer is full, a request's rows are dropped
(all of them) and counted in `berth_prediction_log_dropped_total`; a failed write is counted
there too. Prediction is never slowed down or failed by the log.

Retention runs on its own timer (not per batch): rows older than `max_age` go, then the oldest
rows beyond `max_rows`, with the feedback that belongs to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import numpy as np
from prometheus_client import Counter
from sqlalchemy import Table, delete, select

from berth.monitoring.config import PredictionLogConfig
from berth.runtimes.base import ModelInput
from berth.serving.dataplane import PredictResult
from berth.store import audit
from berth.store.bulk_insert import insert_values
from berth.store.db import Database
from berth.store.tables import FeedbackRow, PredictionRow

log = logging.getLogger("berth.monitoring")

PREDICTIONS_TABLE: Table = PredictionRow.__table__  # type: ignore[assignment]

PREDICTION_LOG_DROPPED = Counter(
    "berth_prediction_log_dropped",
    "Prediction rows not logged: the log's buffer was full, or writing them failed.",
)
PREDICTION_LOG_WRITTEN = Counter(
    "berth_prediction_log_written", "Prediction rows written to the prediction log."
)


class PredictionLog:
    """Buffers predictions from the event loop and writes them to `predictions` in batches."""

    def __init__(self, db: Database, config: PredictionLogConfig) -> None:
        self.db = db
        self.config = config
        self._pending: deque[tuple[PredictResult, datetime]] = deque()
        self._pending_rows = 0
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # the hot path ------------------------------------------------------------------------

    def observe(self, result: PredictResult, inputs: ModelInput | None = None) -> None:
        """The dataplane observer: O(1), never blocks, never raises for a full buffer."""
        if not self.config.enabled:
            return
        if self._pending_rows + result.rows > self.config.queue_rows:
            PREDICTION_LOG_DROPPED.inc(result.rows)
            return
        self._pending.append((result, datetime.now(UTC)))
        self._pending_rows += result.rows
        if self._pending_rows >= self.config.batch_rows and self._wake is not None:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._write_forever()),
            asyncio.create_task(self._retain_forever()),
        ]

    async def stop(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        # Not in the middle of a write (see berth.store.audit.AuditQueue.stop).
        async with self._lock:
            for task in self._tasks:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()

    # writing -----------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write every buffered row now (and wait for a write in progress); rows written."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            items = list(self._pending)
            self._pending.clear()
            rows = self._pending_rows
            self._pending_rows = 0
            if not items:
                return 0
            try:
                written = await anyio.to_thread.run_sync(self.write, items)
            except Exception:
                PREDICTION_LOG_DROPPED.inc(rows)
                log.exception("could not write %d prediction log rows", rows)
                return 0
            PREDICTION_LOG_WRITTEN.inc(written)
            return written

    def write(self, items: list[tuple[PredictResult, datetime]]) -> int:
        """Insert the rows of these results in one transaction (runs in a worker thread)."""
        rows = [row for result, at in items for row in prediction_values(result, at)]
        if rows:
            # Not the ORM's bulk path, which costs several times more CPU per row (paid under the
            # GIL while the worker serves requests); see berth.store.bulk_insert.
            with self.db.session() as session:
                insert_values(session, PREDICTIONS_TABLE, COLUMNS, rows)
        return len(rows)

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_seconds)
            self._wake.clear()
            await self.flush()

    # retention ---------------------------------------------------------------------------

    async def _retain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_seconds)
            try:
                await anyio.to_thread.run_sync(self.apply_retention)
            except Exception:
                log.exception("prediction log retention failed; retrying next interval")

    def prune(self, *, actor: str | None = None, address: str | None = None) -> int:
        """Apply the retention now, as `actor` asked (`berth feedback prune`, or POST
        /api/v1/prediction-log/prune): rows deleted, recorded in the audit log."""
        deleted = self.apply_retention()
        what = audit.event(actor, address, "prediction_log.prune", "prediction log")
        audit.AuditLog(self.db).record(replace(what, detail={"deleted": deleted}))
        return deleted

    def apply_retention(self, now: datetime | None = None) -> int:
        """Delete rows older than max_age, then the oldest beyond max_rows; rows deleted.

        Feedback goes with its prediction, and unmatched feedback older than max_age goes too.
        Rows of one request share a timestamp, so the row limit may remove a few rows more.
        """
        cutoff = (now or datetime.now(UTC)) - self.config.max_age
        with self.db.session() as session:
            old = select(PredictionRow.id).where(PredictionRow.created_at < cutoff)
            session.execute(delete(FeedbackRow).where(FeedbackRow.prediction_id.in_(old)))
            session.execute(delete(FeedbackRow).where(FeedbackRow.received_at < cutoff))
            deleted = _rowcount(
                session.execute(delete(PredictionRow).where(PredictionRow.created_at < cutoff))
            )
            boundary = session.scalar(
                select(PredictionRow.created_at)
                .order_by(PredictionRow.created_at.desc())
                .offset(self.config.max_rows)
                .limit(1)
            )
            if boundary is not None:
                beyond = select(PredictionRow.id).where(PredictionRow.created_at <= boundary)
                session.execute(delete(FeedbackRow).where(FeedbackRow.prediction_id.in_(beyond)))
                deleted += _rowcount(
                    session.execute(
                        delete(PredictionRow).where(PredictionRow.created_at <= boundary)
                    )
                )
        if deleted:
            log.info("prediction log retention deleted %d rows", deleted)
        return deleted


def _rowcount(result: Any) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count) if count and count > 0 else 0


# rows ----------------------------------------------------------------------------------


COLUMNS = ("id", "model", "version", "endpoint", "created_at", "prediction", "score", "latency_ms")
"""The `predictions` columns a logged row fills, in the order of `prediction_values`."""


def prediction_rows(result: PredictResult, at: datetime) -> list[dict[str, Any]]:
    """One `predictions` row per predicted row: JSON-safe value, score, latency."""
    return [dict(zip(COLUMNS, values, strict=True)) for values in prediction_values(result, at)]


def prediction_values(result: PredictResult, at: datetime) -> list[tuple[Any, ...]]:
    """`prediction_rows` as tuples in the order of COLUMNS: what the writer inserts, without a
    dict per row (the writer shares the GIL with the requests)."""
    prediction = result.prediction
    values = json_safe(np.asarray(prediction.predictions).tolist())
    ids = result.row_ids()
    scores = _scores(values, prediction.probabilities, prediction.classes, len(ids))
    latency_ms = result.seconds * 1000.0
    version = result.version
    model, number, endpoint = version.model, version.number, result.endpoint
    known = len(values)
    return [
        (
            row_id,
            model,
            number,
            endpoint,
            at,
            values[i] if i < known else None,
            scores[i],
            latency_ms,
        )
        for i, row_id in enumerate(ids)
    ]


def _scores(
    values: list[Any], probabilities: Any, classes: list[Any] | None, n: int
) -> list[float | None]:
    """P(positive class) for binary classifiers, P(predicted class) otherwise; None without."""
    if probabilities is None:
        return [None] * n
    table = np.asarray(probabilities)
    if table.ndim != 2 or table.shape[0] != n or table.shape[1] == 0:
        return [None] * n
    # Python floats from here (a float32 becomes the same float64 numpy would make of it):
    # for a row or a few, numpy's per-call cost is most of the work.
    grid: list[list[Any]] = table.tolist()
    if table.shape[1] == 2:
        return [_finite(row[1]) for row in grid]
    column = _class_columns(classes)
    scores: list[float | None] = []
    for i, row in enumerate(grid):
        index = column.get(_hashable(values[i])) if i < len(values) else None
        scores.append(_finite(row[index]) if index is not None else _top(row))
    return scores


def _top(row: list[Any]) -> float | None:
    """The highest probability of a row; None when one is NaN (numpy's max would be NaN)."""
    numbers = [float(p) for p in row]
    if any(math.isnan(p) for p in numbers):
        return None
    return _finite(max(numbers))


_COLUMNS: dict[int, tuple[list[Any], dict[Any, int]]] = {}
"""Class label to probability column, per list of classes: a runtime hands out the same list
with every prediction of a version, and the writer would otherwise map it again for each row."""


def _class_columns(classes: list[Any] | None) -> dict[Any, int]:
    if classes is None:
        return {}
    known = _COLUMNS.get(id(classes))
    if known is not None and known[0] is classes:  # the same list, not one at a reused address
        return known[1]
    column = {_hashable(c): i for i, c in enumerate(json_safe(list(classes)))}
    if len(_COLUMNS) >= 64:
        _COLUMNS.clear()
    _COLUMNS[id(classes)] = (classes, column)
    return column


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, list | dict) else value


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


_PLAIN = frozenset({int, str, bool, type(None)})
"""Types kept as they are (exactly these: a subclass, such as an IntEnum, goes the long way)."""


def json_safe(value: Any) -> Any:
    """numpy scalars to Python ones, NaN and infinities to None (PostgreSQL's JSON has neither)."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)
