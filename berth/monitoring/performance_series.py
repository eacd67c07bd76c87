"""Live performance over time: a version's feedback-based scores in successive time buckets.

Each bucket is measured exactly as `compute_performance` measures a window (the same metrics,
the same cap on labelled rows), bounded at both ends; one query pair per bucket, which is
cheap for the day or week of hourly buckets the console draws.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from berth.monitoring.performance import Scores, Window, compute_performance
from berth.store.db import Database

METRIC_OF_KIND = {"classification": "accuracy", "regression": "mae"}
"""The one metric a chart draws per kind of model."""


@dataclass(frozen=True)
class Bucket:
    start: datetime
    """Predictions made from here (inclusive) to start + width (exclusive)."""
    count: int
    labelled: int
    scores: Scores


def performance_series(
    db: Database,
    model: str,
    version: int,
    buckets: int,
    width: timedelta,
    now: datetime,
) -> list[Bucket]:
    """`buckets` consecutive buckets of `width`, oldest first, the last one ending at `now`."""
    found: list[Bucket] = []
    for i in range(buckets, 0, -1):
        end = now - width * (i - 1)
        measured = compute_performance(db, model, version, Window(since=width), now=end, until=end)
        start = end - width
        if measured:
            m = measured[0]
            found.append(Bucket(start, m.count, m.labelled, m.scores))
        else:
            found.append(Bucket(start, 0, 0, Scores()))
    return found


def series_document(found: list[Bucket]) -> dict[str, Any]:
    """The chart's columns: bucket starts (epoch seconds), the metric (null where no bucket
    could be judged, or judged as another kind), and labelled rows per bucket.

    The kind is the one most buckets were judged as: a version's predictions rarely change
    kind, but a bucket of only whole-number regressions reads as classification."""
    kinds = Counter(b.scores.kind for b in found if b.scores.kind is not None)
    kind = kinds.most_common(1)[0][0] if kinds else None
    metric = METRIC_OF_KIND.get(kind or "classification", "accuracy")
    return {
        "kind": kind,
        "metric": metric,
        "t": [round(b.start.timestamp(), 3) for b in found],
        "value": [getattr(b.scores, metric) if b.scores.kind == kind else None for b in found],
        "labelled": [b.labelled for b in found],
        "count": [b.count for b in found],
    }
