"""The gates' thresholds as request fields, declared once for every body that carries gates.

`POST /api/v1/validate` (`ops/requests.py`) and a rollout's gates (`rollouts/requests.py`) take
the same thresholds with the same bounds; each adds what only it has (where the rows are, what
no regression is measured against). Only pydantic here: the rollout request models are imported
by commands that must start fast.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from berth.request_model import RequestModel, Text

FRACTION: dict[str, Any] = {"minimum": 0, "maximum": 1}
POSITIVE: dict[str, Any] = {"exclusiveMinimum": 0}
NOT_NEGATIVE: dict[str, Any] = {"minimum": 0}


class GateThresholdFields(RequestModel):
    """What the gates check, as `berth validate`'s flags."""

    target: Text | None = Field(
        None, description="The column of the test rows with the true outcome."
    )
    min_accuracy: float | None = Field(None, json_schema_extra=FRACTION)
    min_auc: float | None = Field(None, json_schema_extra=FRACTION)
    max_rmse: float | None = Field(None, json_schema_extra=NOT_NEGATIVE)
    max_mae: float | None = Field(None, json_schema_extra=NOT_NEGATIVE)
    max_latency_ms: float | None = Field(
        None, description="p99 of one-row predictions, in process.", json_schema_extra=POSITIVE
    )
    no_nan: bool = Field(False, description="No NaN or infinity in predictions.")
    output_range: list[float] | None = Field(
        None, min_length=2, max_length=2, description="[low, high]: every numeric prediction."
    )
