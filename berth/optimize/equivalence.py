"""Whether an optimized runtime computes what its source computes, measured on check rows.

Rules: predicted labels identical on at least `MIN_AGREEMENT` of the rows, and class
probabilities within `tolerance` (absolute) on every row; for regressors (no labels, float
predictions) every predicted value within `tolerance`, relative to max(1, |value|). Class
probability columns are matched by class label, so a graph that orders its classes differently
is compared fairly. Anything that makes the responses differ in shape (missing probabilities,
other classes, a rejected row) fails the check too, since clients would see it.

A lossy optimization (int8 weights, pruning) checked on labelled rows is judged by accuracy
instead: the optimized model's accuracy on the labels may be at most `max_accuracy_drop` below
its source's; the differences are still measured and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from berth.errors import InvalidInput
from berth.optimize.data import CheckData
from berth.runtimes.base import Prediction, Runtime

Array = np.ndarray[Any, Any]

MIN_AGREEMENT = 0.999
TOLERANCE = 1e-4
MAX_ACCURACY_DROP = 0.01
"""How much accuracy a lossy optimization may lose on labelled rows (one point) by default."""
ROUNDING = 1e-9
"""Accuracies are shares of rows computed in floating point: 0.952 - 0.942 is 0.010000000000000009,
so a drop of exactly the limit (5 rows of 500 against 0.01) is compared with this slack."""
WORST_ROWS = 5


@dataclass(frozen=True)
class RowDifference:
    """One row where the two runtimes differ most."""

    row: int
    origin: str
    source: Any
    optimized: Any
    difference: float
    """The largest probability (or relative value) difference on this row."""
    measure: str = "probability"

    def describe(self) -> str:
        return (
            f"{self.origin}: {self.source!r} vs {self.optimized!r}, "
            f"{self.measure} difference {self.difference:.3g}"
        )


@dataclass(frozen=True)
class EquivalenceReport:
    rows: int
    tolerance: float
    min_agreement: float = MIN_AGREEMENT
    agreeing: int | None = None
    """Rows with identical labels (ties included); None for regressors."""
    ties: int = 0
    """Rows whose source probabilities tie (within the tolerance) between the two labels given:
    float rounding decides such a tie, so either label is the source's answer."""
    max_probability_diff: float | None = None
    max_value_diff: float | None = None
    """Regressors: the largest |source - optimized| / max(1, |source|)."""
    worst: tuple[RowDifference, ...] = ()
    problems: tuple[str, ...] = ()
    """Differences that are not a matter of degree (another response shape, a rejected row)."""
    source_accuracy: float | None = None
    optimized_accuracy: float | None = None
    """Accuracies on the labels of labelled rows; None without labels."""
    max_accuracy_drop: float | None = None
    """Set when the check is judged by accuracy (a lossy optimization on labelled rows)."""

    @property
    def judged_by(self) -> str:
        return "accuracy" if self.max_accuracy_drop is not None else "tolerance"

    @property
    def accuracy_drop(self) -> float | None:
        if self.source_accuracy is None or self.optimized_accuracy is None:
            return None
        return self.source_accuracy - self.optimized_accuracy

    @property
    def label_agreement(self) -> float | None:
        if self.agreeing is None or not self.rows:
            return None
        return self.agreeing / self.rows

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        found = list(self.problems)
        if self.max_accuracy_drop is not None:
            drop = self.accuracy_drop
            if drop is not None and drop > self.max_accuracy_drop + ROUNDING:
                found.append(
                    f"accuracy {self.optimized_accuracy:.2%} against its source's "
                    f"{self.source_accuracy:.2%}: {drop:.2%} lower, above the allowed "
                    f"{self.max_accuracy_drop:.2%}"
                )
            return found
        agreement = self.label_agreement
        if agreement is not None and agreement < self.min_agreement:
            found.append(
                f"labels identical on {self.agreeing}/{self.rows} rows ({agreement:.3%}), "
                f"below the required {self.min_agreement:.1%}"
            )
        for what, value in (
            ("probability", self.max_probability_diff),
            ("relative prediction", self.max_value_diff),
        ):
            if value is not None and not value <= self.tolerance:
                found.append(
                    f"max {what} difference {value:.3g}, above the tolerance {self.tolerance:g}"
                )
        return found

    def summary(self) -> str:
        parts = []
        if self.agreeing is not None:
            ties = f" ({self.ties} of them ties broken the other way)" if self.ties else ""
            parts.append(f"labels identical on {self.agreeing}/{self.rows} rows{ties}")
        if self.max_probability_diff is not None:
            parts.append(f"max probability difference {self.max_probability_diff:.3g}")
        if self.max_value_diff is not None:
            parts.append(f"max relative prediction difference {self.max_value_diff:.3g}")
        if self.source_accuracy is not None and self.optimized_accuracy is not None:
            parts.append(f"accuracy {self.source_accuracy:.2%} → {self.optimized_accuracy:.2%}")
        return ", ".join(parts) or f"{self.rows} rows compared"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "label_agreement": self.label_agreement,
            "agreeing": self.agreeing,
            "ties": self.ties,
            "max_probability_diff": self.max_probability_diff,
            "max_value_diff": self.max_value_diff,
            "tolerance": self.tolerance,
            "min_agreement": self.min_agreement,
            "source_accuracy": self.source_accuracy,
            "optimized_accuracy": self.optimized_accuracy,
            "max_accuracy_drop": self.max_accuracy_drop,
            "judged_by": self.judged_by,
            "passed": self.passed,
            "failures": self.failures(),
        }


class NotEquivalent(InvalidInput):
    """The optimized model does not compute what its source does; nothing was registered."""

    def __init__(self, message: str, report: EquivalenceReport) -> None:
        super().__init__(message)
        self.report = report


def check(
    source: Runtime,
    optimized: Runtime,
    data: CheckData,
    *,
    tolerance: float = TOLERANCE,
    min_agreement: float = MIN_AGREEMENT,
    max_accuracy_drop: float | None = None,
) -> EquivalenceReport:
    """Run both runtimes on the check rows and compare what they return.

    `max_accuracy_drop`: judge by accuracy when the rows are labelled (for lossy forms).
    """
    expected = source.predict(data.inputs)
    try:
        actual = optimized.predict(data.inputs)
    except InvalidInput as exc:
        problem = f"the optimized model rejected rows its source accepts: {exc.message}"
        return EquivalenceReport(data.rows, tolerance, min_agreement, problems=(problem,))
    report = compare(expected, actual, data, tolerance=tolerance, min_agreement=min_agreement)
    if data.labels is None or report.problems:
        return report
    return replace(
        report,
        source_accuracy=accuracy(expected, data.labels),
        optimized_accuracy=accuracy(actual, data.labels),
        max_accuracy_drop=max_accuracy_drop,
    )


def accuracy(prediction: Prediction, labels: Array) -> float:
    """The share of rows whose predicted label is the true one.

    A network's score matrix (one column per class) predicts its highest-scoring column; one
    score per row in [0, 1] against 0/1 labels predicts 1 from 0.5.
    """
    predicted = np.asarray(prediction.predictions)
    if predicted.ndim == 2 and predicted.shape[1] > 1 and predicted.dtype.kind == "f":
        predicted = predicted.argmax(axis=1)
    predicted = predicted.reshape(len(predicted))
    truth = np.asarray(labels).reshape(len(labels))
    if truth.dtype.kind == "f" and np.all(np.mod(truth, 1) == 0):
        truth = truth.astype(np.int64)
    if predicted.dtype.kind == "f" and set(np.unique(truth).tolist()) <= {0, 1}:
        predicted = (predicted >= 0.5).astype(np.int64)
    if not len(truth):
        return 0.0
    return float(np.mean(predicted.astype(str) == truth.astype(str)))


def compare(
    expected: Prediction,
    actual: Prediction,
    data: CheckData,
    *,
    tolerance: float = TOLERANCE,
    min_agreement: float = MIN_AGREEMENT,
) -> EquivalenceReport:
    """The report for two predictions of the same rows (`expected` from the source)."""
    rows = len(expected.predictions)
    base = EquivalenceReport(rows, tolerance, min_agreement)
    if len(actual.predictions) != rows:
        problem = (
            f"the optimized model returned {len(actual.predictions)} predictions for {rows} rows"
        )
        return EquivalenceReport(rows, tolerance, min_agreement, problems=(problem,))
    if _is_regression(expected):
        return _compare_values(base, expected, actual, data)
    return _compare_classes(base, expected, actual, data)


def _is_regression(prediction: Prediction) -> bool:
    kind = np.asarray(prediction.predictions).dtype.kind
    return prediction.probabilities is None and prediction.classes is None and kind in "fc"


def _compare_values(
    base: EquivalenceReport, expected: Prediction, actual: Prediction, data: CheckData
) -> EquivalenceReport:
    want = np.asarray(expected.predictions, dtype=np.float64).reshape(base.rows, -1)
    try:
        got = np.asarray(actual.predictions, dtype=np.float64).reshape(base.rows, -1)
    except (TypeError, ValueError):
        got = None
    if got is None or got.shape != want.shape:
        shape = list(np.asarray(actual.predictions).shape)
        problem = f"the optimized model returns predictions of shape {shape}, the source {list(np.asarray(expected.predictions).shape)}"
        return _with(base, problems=(problem,))
    per_row = (_difference(want, got) / np.maximum(1.0, np.abs(want))).max(axis=1)
    disagree = np.zeros(base.rows, dtype=bool)
    worst = _worst(per_row, disagree, expected.predictions, actual.predictions, data)
    worst = tuple(replace(row, measure="relative") for row in worst)
    return _with(base, max_value_diff=_max(per_row), worst=worst)


def _compare_classes(
    base: EquivalenceReport, expected: Prediction, actual: Prediction, data: CheckData
) -> EquivalenceReport:
    want = np.asarray(expected.predictions, dtype=object).reshape(base.rows, -1)
    got = np.asarray(actual.predictions, dtype=object).reshape(base.rows, -1)
    if got.shape != want.shape:
        problem = f"the optimized model returns labels of shape {list(got.shape)}, the source {list(want.shape)}"
        return _with(base, problems=(problem,))
    disagree = (want != got).any(axis=1)
    per_row = np.zeros(base.rows)
    problems: tuple[str, ...] = ()
    max_diff = None
    ties = 0
    if expected.probabilities is not None:
        aligned = _aligned(expected, actual)
        if isinstance(aligned, str):
            problems = (aligned,)
        else:
            per_row = _difference(np.asarray(expected.probabilities, np.float64), aligned).max(
                axis=1
            )
            max_diff = _max(per_row)
            tied = _ties(expected, got, disagree, base.tolerance)
            ties = int(tied.sum())
            disagree = disagree & ~tied
    elif actual.probabilities is not None:
        problems = ("the optimized model returns probabilities its source does not",)
    worst = _worst(per_row, disagree, expected.predictions, actual.predictions, data)
    return _with(
        base,
        agreeing=int(base.rows - disagree.sum()),
        ties=ties,
        max_probability_diff=max_diff,
        worst=worst,
        problems=problems,
    )


def _ties(expected: Prediction, got: Array, disagree: Array, tolerance: float) -> Array:
    """Disagreeing rows where the source gives the optimized label its top probability too."""
    tied = np.zeros(len(disagree), dtype=bool)
    if expected.classes is None or expected.probabilities is None or got.shape[1] != 1:
        return tied
    column = {str(c): i for i, c in enumerate(expected.classes)}
    probabilities = np.asarray(expected.probabilities, dtype=np.float64)
    for row in np.flatnonzero(disagree):
        j = column.get(str(got[row, 0]))
        if j is not None and probabilities[row].max() - probabilities[row, j] <= tolerance:
            tied[row] = True
    return tied


def _aligned(expected: Prediction, actual: Prediction) -> Array | str:
    """The optimized probabilities with columns in the source's class order, or the problem."""
    if actual.probabilities is None:
        return "the optimized model returns no class probabilities, its source does"
    got = np.asarray(actual.probabilities, dtype=np.float64)
    want_shape = np.asarray(expected.probabilities).shape
    if expected.classes is not None and actual.classes is not None:
        if sorted(map(str, expected.classes)) != sorted(map(str, actual.classes)):
            return (
                f"the optimized model has classes {actual.classes}, its source {expected.classes}"
            )
        position = {str(c): i for i, c in enumerate(actual.classes)}
        got = got[:, [position[str(c)] for c in expected.classes]]
    if got.shape != want_shape:
        return (
            f"the optimized model returns probabilities of shape {list(got.shape)}, "
            f"the source {list(want_shape)}"
        )
    return got


def _difference(want: Array, got: Array) -> Array:
    """|want - got|, 0 where both are NaN, infinite where only one is."""
    both = np.isnan(want) & np.isnan(got)
    difference = np.abs(want - got)
    return np.where(both, 0.0, np.where(np.isnan(difference), np.inf, difference))


def _max(per_row: Array) -> float:
    return float(per_row.max()) if len(per_row) else 0.0


def _worst(
    per_row: Array, disagree: Array, expected: Array, actual: Array, data: CheckData
) -> tuple[RowDifference, ...]:
    # Disagreeing labels first, then the largest differences.
    order = np.lexsort((-per_row, ~disagree))[:WORST_ROWS]
    return tuple(
        RowDifference(
            row=int(i),
            origin=data.origin(int(i)),
            source=_plain(expected[i]),
            optimized=_plain(actual[i]),
            difference=float(per_row[i]),
        )
        for i in order
        if disagree[i] or per_row[i] > 0
    )


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _with(base: EquivalenceReport, **changes: Any) -> EquivalenceReport:
    return replace(base, **changes)
