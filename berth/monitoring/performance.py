"""Live model performance: logged predictions joined with their feedback.

Feedback rows are stored on their own (no foreign key: feedback may arrive before its
prediction is flushed, or from another worker) and joined here, at query time.

Per version, over a window (the last `since` and/or the last `last` labelled rows):
- classification (the version has scores, or predicts labels: strings, booleans, or numbers
  that are all whole): accuracy, and ROC AUC when exactly two labels occur, both among the
  outcomes, and every row has a score. The score of a binary classifier is P(second class in sorted order), the order
  scikit-learn gives `classes_`; so the positive label is the larger of the two.
- regression (no scores, numeric predictions, at least one not whole): MAE and RMSE.
Labels compare by value, so an outcome of `1`, `1.0` or `"1"` matches a prediction of `1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import numpy as np
from prometheus_client import Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from berth.monitoring.config import PerformanceConfig
from berth.observability import metrics
from berth.observability.window import MAX_LABELLED as MAX_LABELLED
from berth.observability.window import Window as Window
from berth.store.db import Database
from berth.store.tables import FeedbackRow, PredictionRow

log = logging.getLogger("berth.monitoring")

# Defined in metrics.py (multiprocess-aware); a local one only if that file lacks it.
MODEL_ACCURACY: Gauge = getattr(metrics, "MODEL_ACCURACY", None) or Gauge(
    "berth_model_accuracy",
    "Live performance of a served version from feedback over the performance window "
    "(metric: accuracy, auc, mae, rmse).",
    ["model", "version", "metric"],
)
METRICS = ("accuracy", "auc", "mae", "rmse")


@dataclass(frozen=True)
class Scores:
    kind: str | None = None
    """classification, regression, or None (no labelled rows to judge)."""
    accuracy: float | None = None
    auc: float | None = None
    mae: float | None = None
    rmse: float | None = None


@dataclass(frozen=True)
class VersionPerformance:
    version: int
    count: int
    """Predictions logged in the time window."""
    labelled: int
    """Of those (at most `last`), the ones with feedback."""
    scores: Scores

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "count": self.count,
            "labelled": self.labelled,
            **asdict(self.scores),
        }


def compute_performance(
    db: Database,
    model: str,
    version: int | None = None,
    window: Window | None = None,
    now: datetime | None = None,
    until: datetime | None = None,
) -> list[VersionPerformance]:
    """Performance per version of `model` that has predictions in the window, by version.

    `until` also drops predictions made at or after it, so a past span (from `now - since` to
    `until`) is measured exactly; None keeps every prediction up to the present."""
    window = window or Window()
    start = _start(window, now)
    conditions = _conditions(model, version, start, until)
    found: list[VersionPerformance] = []
    with db.session() as session:
        counts = session.execute(
            select(PredictionRow.version, func.count())
            .where(*conditions)
            .group_by(PredictionRow.version)
            .order_by(PredictionRow.version)
        ).all()
        for number, count in counts:
            labelled = _labelled(session, [*conditions, PredictionRow.version == number], window)
            found.append(
                VersionPerformance(
                    version=number, count=count, labelled=len(labelled), scores=measure(labelled)
                )
            )
    return found


FEEDBACK_SKEW = timedelta(hours=1)
"""How far a replica's clock may lag another's: feedback stamped that long before the window
opened may still belong to a prediction inside it."""


def version_scores(
    db: Database, model: str, version: int, window: Window, now: datetime | None = None
) -> Scores:
    """The scores of one version over the window, as `compute_performance` has them, without
    counting its predictions; and when no feedback arrived in the window, without reading them
    at all. A busy server logs a million predictions a day, and reading them every refresh in
    every worker cost a second of CPU a minute per served version."""
    start = _start(window, now)
    with db.session() as session:
        if start is not None:
            recent = select(FeedbackRow.prediction_id).where(
                FeedbackRow.received_at >= start - FEEDBACK_SKEW
            )
            if session.execute(recent.limit(1)).first() is None:
                return Scores()
        return measure(_labelled(session, _conditions(model, version, start, None), window))


def _start(window: Window, now: datetime | None) -> datetime | None:
    return (now or datetime.now(UTC)) - window.since if window.since is not None else None


def _conditions(
    model: str, version: int | None, start: datetime | None, until: datetime | None
) -> list[Any]:
    conditions: list[Any] = [PredictionRow.model == model]
    if version is not None:
        conditions.append(PredictionRow.version == version)
    if start is not None:
        conditions.append(PredictionRow.created_at >= start)
    if until is not None:
        conditions.append(PredictionRow.created_at < until)
    return conditions


def _labelled(
    session: Session, conditions: list[Any], window: Window
) -> list[tuple[Any, float | None, Any]]:
    """(prediction, score, actual) of the latest predictions with feedback, at most `last`."""
    rows = session.execute(
        select(PredictionRow.prediction, PredictionRow.score, FeedbackRow.actual)
        .join(FeedbackRow, FeedbackRow.prediction_id == PredictionRow.id)
        .where(*conditions)
        .order_by(PredictionRow.created_at.desc(), PredictionRow.id.desc())
        .limit(min(window.last or MAX_LABELLED, MAX_LABELLED))
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


# metrics -------------------------------------------------------------------------------


def measure(rows: Sequence[tuple[Any, float | None, Any]]) -> Scores:
    """Scores of (prediction, score, actual) rows; rows without a scalar pair are skipped."""
    pairs = [(p, s, a) for p, s, a in rows if _scalar(p) and _scalar(a)]
    if not pairs:
        return Scores()
    # Value-based, not type-based: SQLite's JSON column reads 4.0 back as 4.
    classification = any(s is not None for _, s, _ in pairs) or not all(
        _number(p) for p, _, _ in pairs
    )
    classification = classification or all(float(p).is_integer() for p, _, _ in pairs)
    if classification:
        return _classification(pairs)
    numeric = [(float(p), float(a)) for p, _, a in pairs if _number(a)]
    if not numeric:
        return Scores(kind="regression")
    errors = np.array([p - a for p, a in numeric])
    return Scores(
        kind="regression",
        mae=float(np.mean(np.abs(errors))),
        rmse=float(math.sqrt(np.mean(errors**2))),
    )


def _classification(pairs: list[tuple[Any, float | None, Any]]) -> Scores:
    hits = [label_key(p) == label_key(a) for p, _, a in pairs]
    accuracy = sum(hits) / len(hits)
    auc = None
    labels = {label_key(p): p for p, _, _ in pairs} | {label_key(a): a for _, _, a in pairs}
    outcomes = {label_key(a) for _, _, a in pairs}
    if len(labels) == 2 and len(outcomes) == 2 and all(s is not None for _, s, _ in pairs):
        positive = _positive(list(labels.values()))
        truth = [label_key(a) == label_key(positive) for _, _, a in pairs]
        auc = roc_auc(truth, [float(s) for _, s, _ in pairs if s is not None])
    return Scores(kind="classification", accuracy=accuracy, auc=auc)


def _positive(labels: list[Any]) -> Any:
    """The second of two labels in sorted order (numbers numerically, else as text)."""
    if all(_number(v) or isinstance(v, bool) for v in labels):
        return max(labels, key=float)
    return max(labels, key=str)


def roc_auc(truth: Sequence[bool], scores: Sequence[float]) -> float | None:
    """ROC AUC by the rank (Mann-Whitney) method, ties get average ranks; None if one class."""
    positives = sum(truth)
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        rank = (i + j) / 2 + 1  # ranks i+1..j+1 share their average
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        i = j + 1
    positive_ranks = sum(r for r, t in zip(ranks, truth, strict=True) if t)
    return (positive_ranks - positives * (positives + 1) / 2) / (positives * negatives)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def label_key(value: Any) -> str:
    """A label's identity: 1, 1.0 and "1" are one label; True is "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        with contextlib.suppress(ValueError):
            number = float(text)
            if number.is_integer() and math.isfinite(number):
                return str(int(number))
        return text
    return str(value)


# the gauges ----------------------------------------------------------------------------


class PerformanceGauges:
    """Sets `berth_model_accuracy{model,version,metric}` for served versions periodically."""

    def __init__(
        self,
        db: Database,
        versions: Callable[[], list[tuple[str, int]]],
        config: PerformanceConfig,
    ) -> None:
        self.db = db
        self.versions = versions
        self.config = config
        self._set: set[tuple[str, str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            try:
                await anyio.to_thread.run_sync(self.update)
            except Exception:
                log.exception("updating the model performance gauges failed")

    def update(self) -> None:
        """Recompute every served version's gauges; drop those of versions gone or unjudged."""
        fresh: set[tuple[str, str, str]] = set()
        for model, number in self.versions():
            scores = version_scores(self.db, model, number, Window(since=self.config.window))
            for metric in METRICS:
                value = getattr(scores, metric)
                if value is not None:
                    labels = (model, str(number), metric)
                    MODEL_ACCURACY.labels(*labels).set(value)
                    fresh.add(labels)
        for labels in self._set - fresh:
            with contextlib.suppress(KeyError):
                MODEL_ACCURACY.remove(*labels)
        self._set = fresh
