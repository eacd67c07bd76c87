"""The rows of the prediction log, from a prediction reduced to what the log keeps.

A `LoggedResult` is a plain tuple of the prediction's values (numpy arrays pickle in C), so a
serving process can hand it to the log's writer process for next to nothing; the writer turns
it into rows. This module imports numpy only, so the writer starts without the serving stack.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np


class LoggedResult(NamedTuple):
    prediction_id: str
    rows: int
    model: str
    version: int
    endpoint: str
    created_at: datetime
    predictions: Any
    probabilities: Any
    classes: list[Any] | None
    seconds: float

    def row_ids(self) -> list[str]:
        """As `PredictResult.row_ids`: the id itself for one row, `id-i` for each of several."""
        if self.rows == 1:
            return [self.prediction_id]
        return [f"{self.prediction_id}-{i}" for i in range(self.rows)]


def rows_of(result: LoggedResult) -> list[dict[str, Any]]:
    """One `predictions` row per predicted row: JSON-safe value, score, latency."""
    values = json_safe(np.asarray(result.predictions).tolist())
    ids = result.row_ids()
    scores = _scores(values, result.probabilities, result.classes, len(ids))
    latency_ms = result.seconds * 1000.0
    return [
        {
            "id": row_id,
            "model": result.model,
            "version": result.version,
            "endpoint": result.endpoint,
            "created_at": result.created_at,
            "prediction": values[i] if i < len(values) else None,
            "score": scores[i],
            "latency_ms": latency_ms,
        }
        for i, row_id in enumerate(ids)
    ]


def _scores(
    values: list[Any], probabilities: Any, classes: list[Any] | None, n: int
) -> list[float | None]:
    """P(positive class) for binary classifiers, P(predicted class) otherwise; None without."""
    if probabilities is None:
        return [None] * n
    table = np.asarray(probabilities, dtype=float)
    if table.ndim != 2 or table.shape[0] != n or table.shape[1] == 0:
        return [None] * n
    if table.shape[1] == 2:
        return [_finite(p) for p in table[:, 1].tolist()]
    column = {_hashable(c): i for i, c in enumerate(json_safe(list(classes or [])))}
    scores: list[float | None] = []
    for i in range(n):
        index = column.get(_hashable(values[i])) if i < len(values) else None
        scores.append(_finite(table[i, index] if index is not None else table[i].max()))
    return scores


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, list | dict) else value


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def json_safe(value: Any) -> Any:
    """numpy scalars to Python ones, NaN and infinities to None (PostgreSQL's JSON has neither)."""
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
