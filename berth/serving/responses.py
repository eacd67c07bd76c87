"""The v1 result documents, shared by the REST API and `berth predict`."""

from __future__ import annotations

from typing import Any

import numpy as np

from berth.serving.dataplane import PredictResult


def plain(values: Any) -> Any:
    """numpy values into JSON-ready Python values (None stays None)."""
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        return values.tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in values]


VERSION_HEADER = "X-Berth-Model-Version"
CACHE_HEADER = "X-Berth-Cache"
ROUTE_HEADER = "X-Berth-Route"


def result_headers(result: PredictResult) -> dict[str, str]:
    """Which version answered, and `hit`/`miss` when the model's predictions are cached."""
    headers = {VERSION_HEADER: result.version.ref}
    if result.route:
        headers[ROUTE_HEADER] = result.route
    if result.cached is not None:
        headers[CACHE_HEADER] = "hit" if result.cached else "miss"
    return headers


def single_document(result: PredictResult) -> dict[str, Any]:
    prediction = result.prediction
    probabilities = plain(prediction.probabilities)
    return {
        "prediction": plain(prediction.predictions)[0],
        "probability": max(probabilities[0]) if probabilities else None,
        "probabilities": probabilities[0] if probabilities else None,
        "classes": plain(prediction.classes),
        "model": result.version.model,
        "model_version": result.version.number,
        "prediction_id": result.prediction_id,
        **_via(result),
    }


def batch_document(result: PredictResult) -> dict[str, Any]:
    prediction = result.prediction
    return {
        "predictions": plain(prediction.predictions),
        "probabilities": plain(prediction.probabilities),
        "classes": plain(prediction.classes),
        "model": result.version.model,
        "model_version": result.version.number,
        "prediction_ids": result.row_ids(),
        **_via(result),
    }


def _via(result: PredictResult) -> dict[str, str]:
    """Through an endpoint: which endpoint, and which of its routes answered."""
    return {"endpoint": result.endpoint, "route": result.route} if result.route else {}
