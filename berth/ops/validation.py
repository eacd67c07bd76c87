"""Validation gates: checks a version must pass on test data before it is trusted with traffic.

`run_gates(registry, "churn:3", GateConfig(data=..., target="churned", min_accuracy=0.8))`
predicts the data file with the version, in process, and returns one `GateCheck` per gate:

- metrics on the target column: accuracy and ROC AUC for classifiers (binary: the probability
  of the second class, scikit-learn's positive class; multi-class: the macro average of one
  class against the rest over the classes the target holds), RMSE and MAE for regressors;
- latency: the p99 of one-row predictions (the model alone, no HTTP), after a warm-up;
- no NaN or infinity in the predictions and class probabilities;
- output range: numeric predictions, or the class probabilities of a classifier whose labels
  are not numbers, all within [low, high];
- no regression against another version: the same metrics on the same rows, each no worse
  than the other version's by more than the tolerance.

A classifier is a version that returns class probabilities, or labels that are not floats
(text, booleans, integers); a regressor returns floats without probabilities. A gate that
does not apply to the version (AUC of a regressor, a target with none of the model's labels)
is an `InvalidInput`, never a silent pass: a CI job must not go green on a misconfigured gate.

Labels compare by value (1, 1.0 and "1" are one label), as live performance does.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from berth.errors import InvalidInput, ModelLoadError
from berth.monitoring.performance import label_key
from berth.registry.references import parse_reference
from berth.registry.service import Registry
from berth.registry.signature import Signature, read_sample
from berth.registry.versions import VersionInfo
from berth.runtimes.base import ModelInput, Prediction, Runtime
from berth.runtimes.loading import load_version
from berth.serving.table_input import model_input
from berth.serving.validation import decode_named_arrays

Array = np.ndarray[Any, Any]
DataTable = pd.DataFrame | Array

LATENCY_CALLS = 200
"""One-row predictions timed for the latency gate, cycling over at most this many rows."""
WARMUP_CALLS = 5
"""Untimed calls first: lazy initialisation (thread pools, caches) is not request latency."""
CHUNK_ROWS = 10_000
"""Rows predicted per call on the whole file, so a large file does not need one huge batch."""
_EPSILON = 1e-9
"""Slack for float arithmetic: 0.9 must not fail `>= 0.91 - 0.01`."""

_CLASSIFIER = "classifier"
_REGRESSOR = "regressor"
_MULTI_OUTPUT = "multi-output model"


# configuration -----------------------------------------------------------------------------


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
        return tuple(m for m in _METRICS if getattr(self, _METRICS[m].field) is not None)

    def _flags(self, target_only: bool = False) -> list[str]:
        flags = [_METRICS[m].flag for m in self.metrics]
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


# the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateCheck:
    name: str
    """accuracy, auc, rmse, mae, latency_p99_ms, no_nan, output_range or no_regression.METRIC."""
    passed: bool
    value: float | None
    """What was measured (the candidate's metric for no_regression.*); None if nothing was."""
    threshold: str
    """What the value had to be, e.g. '>= 0.8' or '[0, 1]'."""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        # JSON has no NaN or infinity; the detail says what the value was.
        if value is not None and not math.isfinite(value):
            value = None
        return {
            "name": self.name,
            "passed": self.passed,
            "value": value,
            "threshold": self.threshold,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GateReport:
    reference: str
    """The version checked, as NAME:VERSION (an alias is resolved when the gates run)."""
    rows: int
    """Rows of the data file the gates ran on."""
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "rows": self.rows,
            "passed": self.passed,
            "checks": [check.to_dict() for check in self.checks],
        }


def report_table(report: GateReport, title: str | None = None) -> Table:
    """The report as a rich table: check, value, threshold, result, detail."""
    table = Table(
        "check",
        "value",
        "threshold",
        "result",
        "detail",
        title=title or f"{report.reference} on {report.rows} rows",
    )
    for check in report.checks:
        table.add_row(
            check.name,
            format_value(check.value),
            check.threshold,
            "[green]PASS[/]" if check.passed else "[bold red]FAIL[/]",
            check.detail,
        )
    return table


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


# running the gates -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metric:
    field: str
    flag: str
    kind: str
    """The kind of model it applies to."""
    higher_is_better: bool


_METRICS: dict[str, _Metric] = {
    "accuracy": _Metric("min_accuracy", "--min-accuracy", _CLASSIFIER, True),
    "auc": _Metric("min_auc", "--min-auc", _CLASSIFIER, True),
    "rmse": _Metric("max_rmse", "--max-rmse", _REGRESSOR, False),
    "mae": _Metric("max_mae", "--max-mae", _REGRESSOR, False),
}


@dataclass(frozen=True)
class _Measured:
    value: float
    detail: str


@dataclass(frozen=True)
class _Predicted:
    """One version's predictions on the whole data file."""

    ref: str
    prediction: Prediction
    kind: str

    @property
    def labels(self) -> Array:
        """One prediction per row (an n x 1 output flattened)."""
        predictions = self.prediction.predictions
        return predictions.reshape(-1) if predictions.ndim == 2 else predictions


def run_gates(registry: Registry, reference: str, config: GateConfig) -> GateReport:
    """Run every gate of `config` on the version `reference` resolves to."""
    if not config.any():
        raise InvalidInput(
            "no gate to run; give at least one of --min-accuracy, --min-auc, --max-rmse, "
            "--max-mae, --max-latency-ms, --no-nan, --output-range or --no-regression-vs"
        )
    version = registry.resolve(reference)
    baseline = (
        registry.resolve(config.no_regression_vs) if config.no_regression_vs is not None else None
    )
    assert config.data is not None  # GateConfig refuses gates without data
    path = config.data.expanduser()
    table = _read_data(path, version.signature)
    target = _target(table, config.target, path)
    runtime = load_version(registry, version)
    inputs = _features(version.signature, table, config.target, path)
    rows = len(table)
    candidate = _predict(runtime, inputs, rows, version.ref)

    checks: list[GateCheck] = []
    metrics = config.metrics
    if baseline is not None and not metrics:
        metrics = _default_metrics(candidate)
    measured = {name: _measure(name, candidate, target) for name in metrics}
    for name in config.metrics:
        checks.append(_threshold_check(name, measured[name], getattr(config, _METRICS[name].field)))
    if config.max_latency_ms is not None:
        checks.append(_latency_check(runtime, inputs, rows, config.max_latency_ms))
    if config.no_nan:
        checks.append(_no_nan_check(candidate.prediction))
    if config.output_range is not None:
        checks.append(_range_check(candidate, config.output_range))
    if baseline is not None:
        before = _predict(
            load_version(registry, baseline),
            _features(baseline.signature, table, config.target, path),
            rows,
            baseline.ref,
        )
        for name in metrics:
            checks.append(
                _regression_check(
                    name,
                    (version, measured[name]),
                    (baseline, _measure(name, before, target, baseline=True)),
                    config.regression_tolerance,
                )
            )
    return GateReport(reference=version.ref, rows=rows, checks=tuple(checks))


# data --------------------------------------------------------------------------------------


def _read_data(path: Path, signature: Signature) -> DataTable:
    if not path.is_file():
        raise InvalidInput(
            f"--data {path} does not exist; give a .csv, .parquet or .jsonl file of test rows"
        )
    try:
        # A CSV without a header row gets the model's column names (see read_sample).
        names = signature.input_names if signature.kind == "tabular" else None
        table = read_sample(path, names)
    except InvalidInput as exc:
        cause = exc.__cause__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
        raise InvalidInput(
            f"could not read --data {path} ({why}); give a .csv, .parquet, .json or .jsonl "
            "file of test rows (.npy for a tensor model without --target)"
        ) from exc
    if len(table) == 0:
        raise InvalidInput(f"--data {path} holds no rows; give a file with at least one test row")
    return table


def _target(table: DataTable, target: str | None, path: Path) -> pd.Series[Any] | None:
    if target is None:
        return None
    if not isinstance(table, pd.DataFrame):
        raise InvalidInput(
            f"--data {path.name} is an array without column names, so it has no --target "
            f"column '{target}'; give a .csv, .parquet or .jsonl file with the outcome column"
        )
    if target not in table.columns:
        columns = ", ".join(str(c) for c in table.columns[:20])
        raise InvalidInput(
            f"--data {path.name} has no column '{target}' (its columns: {columns}); pass "
            "--target with the name of the column that holds the true outcome"
        )
    return table[target]


def _features(signature: Signature, table: DataTable, target: str | None, path: Path) -> ModelInput:
    """The model input, checked and cast as serving would: by the version's signature."""
    field = f"--data {path.name}"
    if signature.kind == "tabular":
        # Columns are picked by name, so the target and any extra columns are left out.
        return model_input(signature, table, field)
    if isinstance(table, pd.DataFrame) and target is not None:
        table = table.drop(columns=[target])
    if len(signature.inputs) > 1:
        if not isinstance(table, pd.DataFrame):
            raise InvalidInput(
                f"{field}: this model has the inputs {signature.input_names}; give a table "
                "(.csv, .parquet, .jsonl) with one column per input"
            )
        arrays = {str(c): table[c].to_numpy() for c in table.columns}
        return decode_named_arrays(signature, arrays, field, max_rows=len(table))
    try:
        return model_input(signature, table, field)
    except InvalidInput as exc:
        if not isinstance(table, pd.DataFrame):
            raise
        # A tensor model takes the columns by position, so an extra column shifts every value.
        raise InvalidInput(
            f"{exc.message}. A tensor model takes every column of --data except --target, in "
            "file order; remove the other columns (ids, timestamps) or name the outcome with "
            "--target"
        ) from exc


def _take(inputs: ModelInput, rows: slice) -> ModelInput:
    if isinstance(inputs, pd.DataFrame):
        return inputs.iloc[rows].reset_index(drop=True)
    if isinstance(inputs, dict):
        return {name: array[rows] for name, array in inputs.items()}
    picked: Array = inputs[rows]
    return picked


# prediction --------------------------------------------------------------------------------


def _predict(runtime: Runtime, inputs: ModelInput, rows: int, ref: str) -> _Predicted:
    parts = [
        runtime.predict(_take(inputs, slice(start, start + CHUNK_ROWS)))
        for start in range(0, rows, CHUNK_ROWS)
    ]
    for part, start in zip(parts, range(0, rows, CHUNK_ROWS), strict=True):
        expected = min(CHUNK_ROWS, rows - start)
        if len(part.predictions) != expected:
            raise ModelLoadError(
                f"{ref} returned {len(part.predictions)} predictions for {expected} rows; "
                "a model must return one prediction per input row"
            )
    probabilities = [p.probabilities for p in parts]
    prediction = Prediction(
        predictions=np.concatenate([p.predictions for p in parts]),
        probabilities=None
        if any(p is None for p in probabilities)
        else np.concatenate([p for p in probabilities if p is not None]),
        classes=parts[0].classes,
    )
    return _Predicted(ref, prediction, _kind(prediction))


def _kind(prediction: Prediction) -> str:
    predictions = prediction.predictions
    if predictions.ndim > 2 or (predictions.ndim == 2 and predictions.shape[1] != 1):
        return _MULTI_OUTPUT
    if prediction.probabilities is not None or prediction.classes is not None:
        return _CLASSIFIER
    # Integers are labels (a classifier without predict_proba, e.g. SVC); floats are values.
    if predictions.dtype.kind in "iub" or not _numeric(predictions):
        return _CLASSIFIER
    return _REGRESSOR


def _numeric(values: Array) -> bool:
    if values.dtype.kind in "iuf":
        return True
    if values.dtype.kind != "O":
        return False
    return all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in values.reshape(-1).tolist()
    )


def _default_metrics(candidate: _Predicted) -> tuple[str, ...]:
    """What --no-regression-vs compares when no metric threshold is given."""
    if candidate.kind == _CLASSIFIER:
        has_auc = candidate.prediction.probabilities is not None
        return ("accuracy", "auc") if has_auc else ("accuracy",)
    if candidate.kind == _REGRESSOR:
        return ("rmse", "mae")
    raise InvalidInput(
        f"--no-regression-vs compares accuracy/AUC or RMSE/MAE, which need one prediction per "
        f"row; {candidate.ref} returns {_per_row(candidate)} values per row"
    )


# metrics -----------------------------------------------------------------------------------


def _measure(
    name: str, predicted: _Predicted, target: pd.Series[Any] | None, baseline: bool = False
) -> _Measured:
    metric = _METRICS[name]
    assert target is not None  # GateConfig refuses metric gates without --target
    if predicted.kind != metric.kind and baseline:
        raise InvalidInput(
            f"--no-regression-vs compares {name}, which needs a {metric.kind}, but "
            f"{predicted.ref} is a {predicted.kind}; compare with a version of the same model "
            "kind"
        )
    if predicted.kind != metric.kind:
        raise InvalidInput(_wrong_kind(metric, predicted))
    missing = int(target.isna().sum())
    if missing:
        raise InvalidInput(
            f"target column '{target.name}' has {missing} empty values; {name} needs the true "
            "outcome of every row, so remove those rows or fill them in"
        )
    measure: Callable[[_Predicted, pd.Series[Any]], _Measured] = _MEASURES[name]
    return measure(predicted, target)


def _wrong_kind(metric: _Metric, predicted: _Predicted) -> str:
    if predicted.kind == _CLASSIFIER:
        what, instead = "a classifier (it returns class labels)", "--min-accuracy or --min-auc"
    elif predicted.kind == _REGRESSOR:
        what = "a regressor (it returns numbers without class probabilities)"
        instead = "--max-rmse or --max-mae"
    else:
        what = f"a multi-output model ({_per_row(predicted)} values per row)"
        instead = "--no-nan, --output-range or --max-latency-ms"
    return f"{metric.flag} applies to {metric.kind}s, but {predicted.ref} is {what}; use {instead}"


def _per_row(predicted: _Predicted) -> int:
    shape = predicted.prediction.predictions.shape
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _accuracy(predicted: _Predicted, target: pd.Series[Any]) -> _Measured:
    truth = [label_key(v) for v in target.tolist()]
    labels = [label_key(v) for v in predicted.labels.tolist()]
    _check_labels(predicted, truth, str(target.name))
    hits = sum(p == t for p, t in zip(labels, truth, strict=True))
    return _Measured(hits / len(truth), f"{hits} of {len(truth)} rows predicted right")


def _check_labels(predicted: _Predicted, truth: list[str], column: str) -> None:
    """Refuse a target column that holds none of the model's classes: it is the wrong column."""
    classes = predicted.prediction.classes
    if classes is None:
        return
    known = {label_key(c) for c in classes}
    if not known & set(truth):
        raise InvalidInput(
            f"target column '{column}' holds {_some(set(truth))}, none of which {predicted.ref} "
            f"predicts (its classes: {_some(known)}); pass --target with the column of true "
            "class labels"
        )


def _auc(predicted: _Predicted, target: pd.Series[Any]) -> _Measured:
    from sklearn.metrics import roc_auc_score  # sklearn.metrics costs a second to import

    probabilities = predicted.prediction.probabilities
    classes = predicted.prediction.classes
    if probabilities is None or classes is None or probabilities.shape[1] != len(classes):
        raise InvalidInput(
            f"--min-auc needs class probabilities, and {predicted.ref} returns none (e.g. an SVC "
            "without probability=True); use --min-accuracy"
        )
    truth = np.asarray([label_key(v) for v in target.tolist()], dtype=object)
    column = str(target.name)
    _check_labels(predicted, truth.tolist(), column)
    names = [label_key(c) for c in classes]
    unknown = set(truth.tolist()) - set(names)
    if unknown:
        raise InvalidInput(
            f"target column '{column}' holds {_some(unknown)}, which {predicted.ref} has no "
            f"probability for (its classes: {_some(set(names))}); AUC is defined only over the "
            "model's classes, so remove those rows"
        )
    present = [i for i, name in enumerate(names) if (truth == name).any()]
    if len(present) < 2:
        raise InvalidInput(
            f"AUC needs at least two classes in target column '{column}', which holds only "
            f"{_some(set(truth.tolist()))}; give test rows of every class"
        )
    if not np.isfinite(probabilities).all():
        return _Measured(math.nan, "the class probabilities hold NaN or infinity")
    if len(names) == 2:
        value = float(roc_auc_score(truth == names[1], probabilities[:, 1]))
        return _Measured(value, f"binary, positive class {classes[1]!r}")
    scores = [float(roc_auc_score(truth == names[i], probabilities[:, i])) for i in present]
    detail = f"macro one-vs-rest over {len(present)} classes"
    absent = [classes[i] for i in range(len(names)) if i not in present]
    if absent:
        detail += f" (absent from the target, left out: {', '.join(map(repr, absent))})"
    return _Measured(statistics.fmean(scores), detail)


def _errors(predicted: _Predicted, target: pd.Series[Any]) -> Array:
    try:
        truth = pd.to_numeric(target).to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        sample = next(v for v in target.tolist() if not _is_number_text(v))
        raise InvalidInput(
            f"target column '{target.name}' is not numeric (it holds {sample!r}); RMSE and MAE "
            "compare numbers, so pass --target with the column of true values"
        ) from None
    values: Array = predicted.labels.astype(np.float64) - truth
    return values


def _is_number_text(value: Any) -> bool:
    try:
        float(value)
    except (ValueError, TypeError):
        return False
    return True


def _rmse(predicted: _Predicted, target: pd.Series[Any]) -> _Measured:
    errors = _errors(predicted, target)
    return _Measured(float(np.sqrt(np.mean(errors**2))), _over(errors))


def _mae(predicted: _Predicted, target: pd.Series[Any]) -> _Measured:
    errors = _errors(predicted, target)
    return _Measured(float(np.mean(np.abs(errors))), _over(errors))


def _over(errors: Array) -> str:
    bad = int((~np.isfinite(errors)).sum())
    if bad:
        return f"{bad} of {len(errors)} predictions are NaN or infinite"
    return f"over {len(errors)} rows"


_MEASURES: dict[str, Callable[[_Predicted, pd.Series[Any]], _Measured]] = {
    "accuracy": _accuracy,
    "auc": _auc,
    "rmse": _rmse,
    "mae": _mae,
}


def _some(labels: set[str]) -> str:
    shown = sorted(labels)[:5]
    more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
    return ", ".join(repr(label) for label in shown) + more


# checks ------------------------------------------------------------------------------------


def _threshold_check(name: str, measured: _Measured, threshold: float) -> GateCheck:
    metric = _METRICS[name]
    value = measured.value
    # NaN compares false both ways: a NaN metric fails whichever way the gate points.
    if metric.higher_is_better:
        passed, shown = value >= threshold, f">= {threshold:g}"
    else:
        passed, shown = value <= threshold, f"<= {threshold:g}"
    return GateCheck(name, bool(passed), value, shown, measured.detail)


def _latency_check(runtime: Runtime, inputs: ModelInput, rows: int, max_ms: float) -> GateCheck:
    distinct = min(rows, LATENCY_CALLS)
    singles = [_take(inputs, slice(i, i + 1)) for i in range(distinct)]
    for call in range(WARMUP_CALLS):
        runtime.predict(singles[call % distinct])
    durations: list[float] = []
    for call in range(LATENCY_CALLS):
        single = singles[call % distinct]
        started = time.perf_counter()
        runtime.predict(single)
        durations.append((time.perf_counter() - started) * 1000)
    p99 = float(np.percentile(durations, 99))
    return GateCheck(
        "latency_p99_ms",
        p99 <= max_ms,
        p99,
        f"<= {max_ms:g} ms",
        f"p99 of {LATENCY_CALLS} one-row predictions over {distinct} rows, in process "
        f"(median {statistics.median(durations):.3g} ms)",
    )


def _non_finite(values: Array) -> Array:
    """A mask of the NaN/infinite (or missing) entries of any array."""
    if values.dtype.kind in "fc":
        mask: Array = ~np.isfinite(values)
        return mask
    if values.dtype.kind == "O":
        found: Array = np.vectorize(_missing_or_non_finite, otypes=[bool])(values)
        return found
    return np.zeros(values.shape, dtype=bool)


def _missing_or_non_finite(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return not math.isfinite(value)
    return False


def _no_nan_check(prediction: Prediction) -> GateCheck:
    parts = [("predictions", prediction.predictions)]
    if prediction.probabilities is not None:
        parts.append(("class probabilities", prediction.probabilities))
    found: list[str] = []
    total = 0
    for what, values in parts:
        mask = _non_finite(values)
        count = int(mask.sum())
        total += count
        if count:
            rows = mask.reshape(len(mask), -1).any(axis=1)
            found.append(f"{count} in the {what} (first at row {int(np.argmax(rows))})")
    checked = " and ".join(what for what, _ in parts)
    detail = "; ".join(found) if found else f"none in the {checked}"
    return GateCheck("no_nan", total == 0, float(total), "0 NaN/inf", detail)


def _range_check(predicted: _Predicted, bounds: tuple[float, float]) -> GateCheck:
    low, high = bounds
    prediction = predicted.prediction
    values: Array
    if _numeric(prediction.predictions):
        what, values = "predictions", prediction.predictions.astype(np.float64)
    elif prediction.probabilities is not None:
        what, values = "class probabilities", prediction.probabilities.astype(np.float64)
    else:
        raise InvalidInput(
            f"--output-range checks numbers, but {predicted.ref} predicts labels that are not "
            "numbers and returns no class probabilities; drop --output-range for this model"
        )
    inside = (values >= low) & (values <= high)  # NaN is inside no range
    outside = int((~inside).sum())
    finite = values[np.isfinite(values)]
    span = (
        f"observed [{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "no finite value"
    )
    detail = f"{what}: {span}"
    if outside:
        rows = (~inside).reshape(len(values), -1).any(axis=1)
        detail += f"; {outside} of {values.size} outside (first at row {int(np.argmax(rows))})"
    return GateCheck("output_range", outside == 0, float(outside), f"[{low:g}, {high:g}]", detail)


def _regression_check(
    name: str,
    candidate: tuple[VersionInfo, _Measured],
    baseline: tuple[VersionInfo, _Measured],
    tolerance: float,
) -> GateCheck:
    (version, now), (other, before) = candidate, baseline
    if _METRICS[name].higher_is_better:
        limit = before.value - tolerance
        passed = now.value >= limit - _EPSILON
        shown = f">= {limit:.4g}"
    else:
        limit = before.value + tolerance
        passed = now.value <= limit + _EPSILON
        shown = f"<= {limit:.4g}"
    detail = (
        f"{name} {now.value:.4f} on {version.ref} vs {before.value:.4f} on {other.ref} "
        f"(change {now.value - before.value:+.4f}, tolerance {tolerance:g})"
    )
    return GateCheck(f"no_regression.{name}", bool(passed), now.value, shown, detail)
