"""Log lines written after a prediction (and its access line) name the version that answered."""

from __future__ import annotations

from berth.observability.logging import bind
from berth.runtimes.base import ModelInput
from berth.serving.dataplane import PredictResult


def bind_prediction(result: PredictResult, _inputs: ModelInput) -> None:
    """A dataplane observer: lines after a prediction (and the access line) name its version."""
    bind(
        model=result.version.model,
        version=str(result.version.number),
        prediction_id=result.prediction_id,
    )
