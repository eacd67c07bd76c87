"""Prediction values and (opt-in) feature values as Prometheus histograms, sampled per request."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from berth.frames import is_frame
from berth.observability.metrics import (
    FEATURE_ROWS_PER_REQUEST,
    FEATURE_VALUE,
    MAX_FEATURES_PER_MODEL,
    PREDICTION_VALUE,
    PREDICTION_VALUES_PER_REQUEST,
)
from berth.runtimes.base import ModelInput
from berth.serving.dataplane import PredictResult


class PredictionMetrics:
    """A dataplane observer: rows per call, sampled output values and (opt-in) feature values.

    Runs on the event loop after every successful prediction, so it only looks at a bounded
    sample: at most `PREDICTION_VALUES_PER_REQUEST` outputs per request, and feature values of
    one request in `feature_every` for the models named in `feature_models`.
    """

    def __init__(self, feature_models: Iterable[str] = (), feature_every: int = 10) -> None:
        self.feature_models = frozenset(feature_models)
        self.feature_every = max(1, feature_every)
        self._feature_requests: dict[str, int] = {}
        # labels() takes a lock and builds a key on every call; the children never change.
        self._histograms: dict[tuple[str, str], Any] = {}

    def __call__(self, result: PredictResult, inputs: ModelInput) -> None:
        model, version = result.version.model, str(result.version.number)
        histogram = self._histograms.get((model, version))
        if histogram is None:
            histogram = self._histograms[model, version] = PREDICTION_VALUE.labels(model, version)
        for value in prediction_values(
            result.prediction.predictions,
            result.prediction.probabilities,
            PREDICTION_VALUES_PER_REQUEST,
        ):
            histogram.observe(value)
        if model in self.feature_models and self._sampled(model):
            for feature, value in feature_values(
                inputs, FEATURE_ROWS_PER_REQUEST, MAX_FEATURES_PER_MODEL
            ):
                FEATURE_VALUE.labels(model, feature).observe(value)

    def _sampled(self, model: str) -> bool:
        seen = self._feature_requests.get(model, 0)
        self._feature_requests[model] = seen + 1
        return seen % self.feature_every == 0


def prediction_values(
    predictions: np.ndarray[Any, Any], probabilities: np.ndarray[Any, Any] | None, limit: int
) -> list[float]:
    """At most `limit` finite values: top-class confidence per row, else numeric outputs."""
    if probabilities is not None and _numeric(probabilities) and probabilities.ndim == 2:
        if len(probabilities) == 1 and limit >= 1 and probabilities.shape[1]:
            # One row, as most requests: in Python, which for a few classes is several times
            # faster than numpy's reduction (and a tenth of the array steps below).
            row = probabilities[0].tolist()
            if any(value != value for value in row):  # NaN, which numpy's max would return
                return []
            top = float(max(row))
            return [top] if math.isfinite(top) else []
        rows = (
            probabilities
            if len(probabilities) <= limit
            else probabilities[_spread(len(probabilities), limit)]
        )
        if rows.shape[1] == 0:
            return []
        picked = rows.max(axis=1)
    elif _numeric(predictions) and predictions.ndim >= 1:
        flat = predictions.reshape(len(predictions), -1) if predictions.ndim > 1 else predictions
        rows = flat[_spread(len(flat), limit)]
        picked = rows.reshape(-1)[:limit]
    else:
        return []
    numbers = picked.astype(np.float64, copy=False)
    return [float(v) for v in numbers[np.isfinite(numbers)]]


def feature_values(inputs: ModelInput, rows: int, features: int) -> list[tuple[str, float]]:
    """(feature, value) for up to `rows` rows of the numeric columns (or first tensor input)."""
    if is_frame(inputs):
        import pandas as pd

        columns = [
            str(name)
            for name, dtype in inputs.dtypes.items()
            if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        ][:features]
        if not columns or inputs.empty:
            return []
        frame = inputs[columns].iloc[_spread(len(inputs), rows)]
        matrix = frame.to_numpy(dtype=np.float64, na_value=np.nan)
        names = columns
    else:
        array = next(iter(inputs.values()), None) if isinstance(inputs, dict) else inputs
        if array is None or not _numeric(array) or array.ndim not in (1, 2) or not len(array):
            return []
        prefix = next(iter(inputs)) if isinstance(inputs, dict) else "input"
        table = array.reshape(len(array), -1)[:, :features]
        matrix = table[_spread(len(table), rows)].astype(np.float64, copy=False)
        names = [f"{prefix}[{j}]" for j in range(table.shape[1])]
    found: list[tuple[str, float]] = []
    for j, name in enumerate(names):
        column = matrix[:, j]
        found.extend((name, float(v)) for v in column[np.isfinite(column)])
    return found


def _numeric(array: np.ndarray[Any, Any]) -> bool:
    """Integers or real floats (numpy's number kinds but complex; not bool)."""
    return array.dtype.kind in "iuf"


def _spread(length: int, limit: int) -> np.ndarray[Any, Any]:
    """Indices of at most `limit` rows spread evenly over `length` (every row when it fits)."""
    if length <= limit:
        return np.arange(length)
    return np.linspace(0, length - 1, limit).astype(np.intp)
