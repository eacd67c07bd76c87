"""What the validation gates check: the gate configuration and the catalogue of metric gates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from berth.errors import InvalidInput
from berth.registry.references import parse_reference

CLASSIFIER = "classifier"
REGRESSOR = "regressor"
MULTI_OUTPUT = "multi-output model"


@dataclass(frozen=True)
class GateMetric:
    field: str
    flag: str
    kind: str
    """The kind of model it applies to."""
    higher_is_better: bool


GATE_METRICS: dict[str, GateMetric] = {
    "accuracy": GateMetric("min_accuracy", "--min-accuracy", CLASSIFIER, True),
    "auc": GateMetric("min_auc", "--min-auc", CLASSIFIER, True),
    "rmse": GateMetric("max_rmse", "--max-rmse", REGRESSOR, False),
    "mae": GateMetric("max_mae", "--max-mae", REGRESSOR, False),
}


@dataclass(frozen=True)
class GateConfig:
    """Which gates to run, and on which data. Invalid combinations are refused on creation."""

    data: Path | None = None
    target: str | None = None
    min_accuracy: float | None = None
    min_auc: float | None = None
    max_rmse: float | None = None
    max_mae: float | None = None
    max_latency_ms: float | None = None
    no_nan: bool = False
    output_range: tuple[float, float] | None = None
    no_regression_vs: str | None = None
    """A model reference, e.g. churn:2 or churn@production."""
    regression_tolerance: float = 0.0

    def __post_init__(self) -> None:
        _check_bounded("--min-accuracy", self.min_accuracy, 0.0, 1.0)
        _check_bounded("--min-auc", self.min_auc, 0.0, 1.0)
        _check_bounded("--max-rmse", self.max_rmse, 0.0, math.inf)
        _check_bounded("--max-mae", self.max_mae, 0.0, math.inf)
        _check_bounded("--max-latency-ms", self.max_latency_ms, 0.0, math.inf)
        if self.max_latency_ms == 0:
            raise InvalidInput("--max-latency-ms must be greater than 0, e.g. --max-latency-ms 10")
        _check_bounded("--regression-tolerance", self.regression_tolerance, 0.0, math.inf)
        if self.output_range is not None:
            low, high = self.output_range
            if math.isnan(low) or math.isnan(high) or low > high:
                raise InvalidInput(
                    f"--output-range {low:g},{high:g} is empty; give LOW,HIGH with LOW <= HIGH, "
                    "e.g. --output-range 0,1"
                )
        if self.target is not None and not self.target.strip():
            raise InvalidInput("--target is empty; give the name of the column with the outcome")
        if self.no_regression_vs is not None:
            parse_reference(self.no_regression_vs)
        if not self.any():
            return
        if self.data is None:
            flags = self._flags()
            raise InvalidInput(
                f"{', '.join(flags)} {'needs' if len(flags) == 1 else 'need'} test rows; pass "
                "--data FILE (.csv, .parquet or .jsonl)"
            )
        needing_target = self._flags(target_only=True)
        if needing_target and self.target is None:
            verb = "compares" if len(needing_target) == 1 else "compare"
            raise InvalidInput(
                f"{', '.join(needing_target)} {verb} predictions with the true outcome; pass "
                "--target COLUMN naming the column of --data that holds it"
            )

    def any(self) -> bool:
        """True when at least one gate is configured."""
        return bool(self._flags())

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics with a threshold, in report order."""
        return tuple(m for m in GATE_METRICS if getattr(self, GATE_METRICS[m].field) is not None)

    def _flags(self, target_only: bool = False) -> list[str]:
        flags = [GATE_METRICS[m].flag for m in self.metrics]
        if self.no_regression_vs is not None:
            flags.append("--no-regression-vs")
        if target_only:
            return flags
        if self.max_latency_ms is not None:
            flags.append("--max-latency-ms")
        if self.no_nan:
            flags.append("--no-nan")
        if self.output_range is not None:
            flags.append("--output-range")
        return flags

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = None if self.data is None else str(self.data)
        out["output_range"] = None if self.output_range is None else list(self.output_range)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateConfig:
        """The inverse of `to_dict`; unknown keys are refused, since an ignored gate passes."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"gate configuration must be a JSON object, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InvalidInput(
                f"gate configuration has unknown keys {unknown}; known keys are {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for key in ("data", "target", "no_regression_vs"):
            if data.get(key) is not None:
                values[key] = _json_text(data[key], key)
        if "data" in values:
            values["data"] = Path(values["data"])
        for key in ("min_accuracy", "min_auc", "max_rmse", "max_mae", "max_latency_ms"):
            if data.get(key) is not None:
                values[key] = _json_number(data[key], key)
        if data.get("regression_tolerance") is not None:
            values["regression_tolerance"] = _json_number(
                data["regression_tolerance"], "regression_tolerance"
            )
        if "no_nan" in data:
            if not isinstance(data["no_nan"], bool):
                raise InvalidInput(f"gate 'no_nan' must be true or false, got {data['no_nan']!r}")
            values["no_nan"] = data["no_nan"]
        bounds = data.get("output_range")
        if bounds is not None:
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise InvalidInput(f"gate 'output_range' must be [low, high], got {bounds!r}")
            values["output_range"] = (
                _json_number(bounds[0], "output_range"),
                _json_number(bounds[1], "output_range"),
            )
        return cls(**values)


def _check_bounded(flag: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if math.isnan(value) or value < low or value > high:
        span = f"at least {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"
        raise InvalidInput(f"{flag} must be a number {span}, got {value:g}")


def _json_text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"gate '{key}' must be a string, got {value!r}")
    return value


def _json_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"gate '{key}' must be a number, got {value!r}")
    return float(value)


def parse_output_range(text: str) -> tuple[float, float]:
    """'0,1' -> (0.0, 1.0); brackets and spaces are allowed ('[0, 1]')."""
    parts = text.strip().strip("[]()").split(",")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidInput(
            f"--output-range {text!r} is not LOW,HIGH; write two numbers separated by a comma, "
            "e.g. --output-range 0,1"
        ) from None
    if math.isnan(low) or math.isnan(high) or low > high:
        raise InvalidInput(
            f"--output-range {text!r} is empty; LOW must not be greater than HIGH, e.g. 0,1"
        )
    return low, high
