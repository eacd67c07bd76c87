"""What people ask of validation: the `request` part of `POST /api/v1/validate`.

The files (the candidate artifact, the test data, a sample or a signature) come as their own
parts; this model is everything else `berth validate` takes as flags. The gates' bounds are
checked by `GateConfig`, in the words of the command's flags, so both edges refuse a bad gate
alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field

from berth.ops.gate_config import GateConfig
from berth.ops.gate_fields import NOT_NEGATIVE, GateThresholdFields
from berth.registration.requests import ArtifactLoading
from berth.registry.references import parse_reference
from berth.request_model import CheckedBy, Text

Reference = Annotated[
    Text,
    CheckedBy(parse_reference),
    Field(description="A model reference: NAME, NAME:VERSION or NAME@ALIAS."),
]
_TypeName = Annotated[Text, Field(min_length=1, max_length=256)]


class GateThresholds(GateThresholdFields):
    """The gates to run (as `berth validate`'s flags); at least one."""

    no_regression_vs: Reference | None = Field(
        None, description="A registered version no metric may be worse than."
    )
    regression_tolerance: float = Field(
        0.0,
        description="How much worse than no_regression_vs a metric may be.",
        json_schema_extra=NOT_NEGATIVE,
    )

    def config(self, data: Path | None) -> GateConfig:
        """The gates on the test rows at `data` (checked: bounds, target, at least one gate)."""
        bounds = self.output_range
        return GateConfig(
            data=data,
            target=self.target,
            min_accuracy=self.min_accuracy,
            min_auc=self.min_auc,
            max_rmse=self.max_rmse,
            max_mae=self.max_mae,
            max_latency_ms=self.max_latency_ms,
            no_nan=self.no_nan,
            output_range=(bounds[0], bounds[1]) if bounds else None,
            no_regression_vs=self.no_regression_vs,
            regression_tolerance=self.regression_tolerance,
        )

    @classmethod
    def of(cls, config: GateConfig) -> GateThresholds:
        """The gates of a checked `GateConfig` (its data aside)."""
        document = config.to_dict()
        del document["data"]
        return cls.parse({k: v for k, v in document.items() if v is not None})


class ValidateRequest(ArtifactLoading):
    """What to validate, and how: the gates, and either a registered version (no artifact
    part) or how to load the uploaded candidate."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "gates": {
            "target": "churned",
            "min_accuracy": 0.9,
            "no_regression_vs": "churn@production",
        },
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    }

    gates: GateThresholds
    reference: Reference | None = Field(
        None,
        description="A registered version to validate; give it without an 'artifact' part.",
    )
    data_file: Annotated[Text, Field(min_length=1, max_length=1024)] | None = Field(
        None,
        description="Test rows already on the server: a file under its "
        "BERTH_VALIDATION_DATA_DIR (a relative path), instead of a 'data' part.",
    )
    sha256: str | None = Field(
        None,
        pattern="^[0-9a-f]{64}$",
        description="The artifact part's sha256 (lowercase hex), as the client computed it; "
        "the server refuses the candidate when the bytes it received hash otherwise.",
    )
    label: Annotated[Text, Field(min_length=1, max_length=256)] | None = Field(
        None,
        description="How the report names the uploaded candidate; default its file name.",
    )
