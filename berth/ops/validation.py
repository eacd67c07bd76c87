"""Validation gates: checks a version must pass on test data before it is trusted with traffic.

`run_gates(registry, "churn:3", GateConfig(data=..., target="churned", min_accuracy=0.8))`
predicts the data file with the version, in process, and returns one `GateCheck` per gate
(`check_model` does the same for a model loaded otherwise: an unregistered candidate file, see
`berth.ops.candidate`):

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from berth.errors import InvalidInput, ModelLoadError
from berth.frames import is_frame
from berth.monitoring.performance import label_key
from berth.ops.gate_config import (
    CLASSIFIER,
    GATE_METRICS,
    MULTI_OUTPUT,
    REGRESSOR,
    GateConfig,
    GateMetric,
)
from berth.ops.gate_report import GateCheck, GateReport
from berth.registry.service import Registry
from berth.registry.signature import Signature, read_sample
from berth.registry.versions import VersionInfo
from berth.runtimes.base import ModelInput, Prediction, Runtime
from berth.runtimes.loading import load_version
from berth.serving.table_input import model_input
from berth.serving.validation import decode_named_arrays

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

Array = np.ndarray[Any, Any]
DataTable: TypeAlias = "pd.DataFrame | Array"

LATENCY_CALLS = 200
"""One-row predictions timed for the latency gate, cycling over at most this many rows."""
WARMUP_CALLS = 5
"""Untimed calls first: lazy initialisation (thread pools, caches) is not request latency."""
CHUNK_ROWS = 10_000
"""Rows predicted per call on the whole file, so a large file does not need one huge batch."""
_EPSILON = 1e-9
"""Slack for float arithmetic: 0.9 must not fail `>= 0.91 - 0.01`."""


# running the gates -------------------------------------------------------------------------


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


@dataclass(frozen=True)
class GatedModel:
    """What the gates check: a loaded model, the inputs it takes, and how the report names it
    (NAME:VERSION for a registered version, the file's name for a candidate file)."""

    ref: str
    signature: Signature
    runtime: Runtime


class GateData:
    """The --data file, read when first asked for and once per set of column names (a CSV
    without a header row takes the model's column names; see `read_sample`)."""

    def __init__(self, config: GateConfig) -> None:
        require_gates(config)
        assert config.data is not None  # GateConfig refuses gates without data
        self.path = config.data.expanduser()
        self.target = config.target
        self._tables: dict[tuple[str, ...] | None, DataTable] = {}

    def table(self, names: list[str] | None) -> DataTable:
        key = _key(names)
        if key not in self._tables:
            self._tables[key] = _read_data(self.path, names)
        return self._tables[key]

    def for_signature(self, signature: Signature) -> DataTable:
        return self.table(_column_names(signature))

    def features(self, names: list[str] | None) -> DataTable:
        """The rows without the --target column (which must be there when given)."""
        table = self.table(names)
        _target(table, self.target, self.path)
        if is_frame(table) and self.target is not None:
            return table.drop(columns=[self.target])
        return table

    def read_as(self, signature: Signature, names: list[str] | None) -> None:
        """Take the rows read with `names` as the rows for `signature`: they are what it was
        inferred from, so reading the file again for its names would give them again."""
        self._tables.setdefault(_key(_column_names(signature)), self.table(names))


def _key(names: list[str] | None) -> tuple[str, ...] | None:
    return tuple(names) if names is not None else None


def _column_names(signature: Signature) -> list[str] | None:
    return signature.input_names if signature.kind == "tabular" else None


def require_gates(config: GateConfig) -> None:
    if not config.any():
        raise InvalidInput(
            "no gate to run; give at least one of --min-accuracy, --min-auc, --max-rmse, "
            "--max-mae, --max-latency-ms, --no-nan, --output-range or --no-regression-vs"
        )


def run_gates(registry: Registry, reference: str, config: GateConfig) -> GateReport:
    """Run every gate of `config` on the version `reference` resolves to."""
    require_gates(config)
    version = registry.resolve(reference)
    baseline = baseline_version(registry, config)
    data = GateData(config)
    # A bad file or target column fails before the model loads.
    _target(data.for_signature(version.signature), config.target, data.path)
    model = GatedModel(version.ref, version.signature, load_version(registry, version))
    return check_model(registry, model, config, data, baseline)


def baseline_version(registry: Registry, config: GateConfig) -> VersionInfo | None:
    """The version --no-regression-vs compares with, if any."""
    if config.no_regression_vs is None:
        return None
    return registry.resolve(config.no_regression_vs)


def check_model(
    registry: Registry,
    model: GatedModel,
    config: GateConfig,
    data: GateData,
    baseline: VersionInfo | None,
) -> GateReport:
    """Run every gate of `config` on a loaded model (and load `baseline` to compare with)."""
    path = data.path
    table = data.for_signature(model.signature)
    target = _target(table, config.target, path)
    runtime = model.runtime
    inputs = _features(model.signature, table, config.target, path)
    rows = len(table)
    candidate = _predict(runtime, inputs, rows, model.ref)

    checks: list[GateCheck] = []
    metrics = config.metrics
    if baseline is not None and not metrics:
        metrics = _default_metrics(candidate)
    measured = {name: _measure(name, candidate, target) for name in metrics}
    for name in config.metrics:
        checks.append(
            _threshold_check(name, measured[name], getattr(config, GATE_METRICS[name].field))
        )
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
                    (model.ref, measured[name]),
                    (baseline.ref, _measure(name, before, target, baseline=True)),
                    config.regression_tolerance,
                )
            )
    return GateReport(reference=model.ref, rows=rows, checks=tuple(checks))


# data --------------------------------------------------------------------------------------


def missing_data(path: Path) -> str:
    """The error for a --data file that is not there."""
    return f"--data {path} does not exist; give a .csv, .parquet or .jsonl file of test rows"


def _read_data(path: Path, names: list[str] | None) -> DataTable:
    if not path.is_file():
        raise InvalidInput(missing_data(path))
    try:
        # A CSV without a header row gets the model's column names (see read_sample).
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
    if not is_frame(table):
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
    if is_frame(table) and target is not None:
        table = table.drop(columns=[target])
    if len(signature.inputs) > 1:
        if not is_frame(table):
            raise InvalidInput(
                f"{field}: this model has the inputs {signature.input_names}; give a table "
                "(.csv, .parquet, .jsonl) with one column per input"
            )
        arrays = {str(c): table[c].to_numpy() for c in table.columns}
        return decode_named_arrays(signature, arrays, field, max_rows=len(table))
    try:
        return model_input(signature, table, field)
    except InvalidInput as exc:
        if not is_frame(table):
            raise
        # A tensor model takes the columns by position, so an extra column shifts every value.
        raise InvalidInput(
            f"{exc.message}. A tensor model takes every column of --data except --target, in "
            "file order; remove the other columns (ids, timestamps) or name the outcome with "
            "--target"
        ) from exc


def _take(inputs: ModelInput, rows: slice) -> ModelInput:
    if is_frame(inputs):
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
        return MULTI_OUTPUT
    if prediction.probabilities is not None or prediction.classes is not None:
        return CLASSIFIER
    # Integers are labels (a classifier without predict_proba, e.g. SVC); floats are values.
    if predictions.dtype.kind in "iub" or not _numeric(predictions):
        return CLASSIFIER
    return REGRESSOR


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
    if candidate.kind == CLASSIFIER:
        has_auc = candidate.prediction.probabilities is not None
        return ("accuracy", "auc") if has_auc else ("accuracy",)
    if candidate.kind == REGRESSOR:
        return ("rmse", "mae")
    raise InvalidInput(
        f"--no-regression-vs compares accuracy/AUC or RMSE/MAE, which need one prediction per "
        f"row; {candidate.ref} returns {_per_row(candidate)} values per row"
    )


# metrics -----------------------------------------------------------------------------------


def _measure(
    name: str, predicted: _Predicted, target: pd.Series[Any] | None, baseline: bool = False
) -> _Measured:
    metric = GATE_METRICS[name]
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


def _wrong_kind(metric: GateMetric, predicted: _Predicted) -> str:
    if predicted.kind == CLASSIFIER:
        what, instead = "a classifier (it returns class labels)", "--min-accuracy or --min-auc"
    elif predicted.kind == REGRESSOR:
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
    import pandas as pd

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
    metric = GATE_METRICS[name]
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
    candidate: tuple[str, _Measured],
    baseline: tuple[str, _Measured],
    tolerance: float,
) -> GateCheck:
    (ref, now), (other, before) = candidate, baseline
    if GATE_METRICS[name].higher_is_better:
        limit = before.value - tolerance
        passed = now.value >= limit - _EPSILON
        shown = f">= {limit:.4g}"
    else:
        limit = before.value + tolerance
        passed = now.value <= limit + _EPSILON
        shown = f"<= {limit:.4g}"
    detail = (
        f"{name} {now.value:.4f} on {ref} vs {before.value:.4f} on {other} "
        f"(change {now.value - before.value:+.4f}, tolerance {tolerance:g})"
    )
    return GateCheck(f"no_regression.{name}", bool(passed), now.value, shown, detail)
