"""The report of an A/B experiment: per-variant estimates, comparisons and a recommendation.

From one window per variant, `experiment_report` estimates the outcome metric of each variant,
compares every variant with the control and recommends one when the evidence allows. Every
result is finite or None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from berth.rollouts.report_text import p_text, value_text
from berth.rollouts.statistics import (
    TestResult,
    mean_interval,
    two_proportion_z_test,
    welch_t_test,
    wilson_interval,
)
from berth.serving.route_window import RouteWindow

Metric = Literal["accuracy", "outcome"]

_METRICS = ("accuracy", "outcome")


@dataclass(frozen=True)
class VariantSample:
    """One variant of an experiment: its name, the version it serves and its window."""

    name: str
    reference: str
    window: RouteWindow


@dataclass(frozen=True)
class VariantRow:
    """A variant's line in the report. None where there is nothing to compute from."""

    name: str
    reference: str
    requests: int
    errors: int
    error_rate: float | None
    mean_latency_ms: float | None
    p99_ms: float | None
    samples: int
    """Observations of the metric: labelled predictions (accuracy) or numeric outcomes."""
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    """The (1 - alpha) interval of the estimate."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Comparison:
    """A variant against the control (two-sided)."""

    variant: str
    control: str
    test: TestResult
    difference: float
    """Variant estimate minus control estimate; 0.0 when either has no estimate."""
    significant: bool
    """p-value below the report's comparison alpha (Bonferroni-adjusted with 3+ variants)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "control": self.control,
            "test": self.test.to_dict(),
            "difference": self.difference,
            "significant": self.significant,
        }


@dataclass(frozen=True)
class ExperimentReport:
    metric: Metric
    alpha: float
    min_samples: int
    variants: tuple[VariantRow, ...]
    comparisons: tuple[Comparison, ...]
    recommendation: str | None
    """The variant to conclude the experiment with, or None (not yet, or no difference)."""
    explanation: str

    @property
    def comparison_alpha(self) -> float:
        """The level each comparison is held to: alpha split over the comparisons."""
        return self.alpha / max(len(self.comparisons), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "alpha": self.alpha,
            "comparison_alpha": self.comparison_alpha,
            "min_samples": self.min_samples,
            "variants": [row.to_dict() for row in self.variants],
            "comparisons": [comparison.to_dict() for comparison in self.comparisons],
            "recommendation": self.recommendation,
            "explanation": self.explanation,
        }


def experiment_report(
    variants: Sequence[VariantSample],
    metric: Metric,
    alpha: float = 0.05,
    min_samples: int = 100,
) -> ExperimentReport:
    """Estimate the metric per variant, compare each variant with the control, recommend.

    - metric "accuracy": the share of correct labelled predictions, Wilson interval, pooled
      two-proportion z-test. metric "outcome": the mean of the numeric outcomes, Student-t
      interval, Welch t-test. Higher is better for both; every test is two-sided.
    - The first variant is the control; every other variant is compared with it. With k > 1
      comparisons (three or more variants) each is held to alpha / k (Bonferroni), so the
      chance of any false "significant" stays at most alpha.
    - Recommend only when every variant has at least `min_samples` samples of the metric. Then:
      if some variants are significantly better than the control, the one with the highest
      estimate among them; else, if the control is significantly better than every other
      variant, the control; else None.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {', '.join(_METRICS)}, got {metric!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if min_samples < 0:
        raise ValueError("min_samples must not be negative")
    if len(variants) < 2:
        raise ValueError("an experiment compares at least two variants")
    names = [variant.name for variant in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")

    rows = tuple(_variant_row(variant, metric, alpha) for variant in variants)
    control = rows[0]
    comparison_alpha = alpha / (len(rows) - 1)
    comparisons = tuple(
        _compare(variants[0].window, control, sample.window, row, metric, comparison_alpha)
        for sample, row in zip(variants[1:], rows[1:], strict=True)
    )
    recommendation, explanation = _recommend(
        rows, comparisons, metric, alpha, comparison_alpha, min_samples
    )
    return ExperimentReport(
        metric=metric,
        alpha=alpha,
        min_samples=min_samples,
        variants=rows,
        comparisons=comparisons,
        recommendation=recommendation,
        explanation=explanation,
    )


def _variant_row(sample: VariantSample, metric: Metric, alpha: float) -> VariantRow:
    window = sample.window
    estimate: float | None
    ci: tuple[float, float] | None = None
    if metric == "accuracy":
        samples, estimate = window.labelled, window.accuracy
        if samples:
            ci = wilson_interval(window.correct, samples, 1 - alpha)
    else:
        samples, estimate = window.outcome_count, window.outcome_mean
        variance = window.outcome_variance
        if estimate is not None and variance is not None:
            ci = mean_interval(estimate, variance, samples, 1 - alpha)
    mean_latency = window.mean_latency_seconds
    p99 = window.latency_quantile(0.99)
    return VariantRow(
        name=sample.name,
        reference=sample.reference,
        requests=window.requests,
        errors=window.errors,
        error_rate=window.error_rate,
        mean_latency_ms=None if mean_latency is None else mean_latency * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
        samples=samples,
        estimate=estimate,
        ci_low=None if ci is None else ci[0],
        ci_high=None if ci is None else ci[1],
    )


def _compare(
    control_window: RouteWindow,
    control: VariantRow,
    window: RouteWindow,
    row: VariantRow,
    metric: Metric,
    comparison_alpha: float,
) -> Comparison:
    if metric == "accuracy":
        test = two_proportion_z_test(
            window.correct, window.labelled, control_window.correct, control_window.labelled
        )
    else:
        test = welch_t_test(
            window.outcome_mean or 0.0,
            window.outcome_variance or 0.0,
            window.outcome_count,
            control_window.outcome_mean or 0.0,
            control_window.outcome_variance or 0.0,
            control_window.outcome_count,
        )
    difference = (
        row.estimate - control.estimate
        if row.estimate is not None and control.estimate is not None
        else 0.0
    )
    return Comparison(
        variant=row.name,
        control=control.name,
        test=test,
        difference=difference,
        significant=test.p_value < comparison_alpha,
    )


def _recommend(
    rows: Sequence[VariantRow],
    comparisons: Sequence[Comparison],
    metric: Metric,
    alpha: float,
    comparison_alpha: float,
    min_samples: int,
) -> tuple[str | None, str]:
    short = [row for row in rows if row.samples < min_samples]
    if short:
        lacking = ", ".join(f"{row.name} has {row.samples} of {min_samples}" for row in short)
        return None, f"too few samples: {lacking}"

    control = rows[0]
    by_name = {row.name: row for row in rows}
    label = "accuracy" if metric == "accuracy" else "mean outcome"
    adjusted = (
        f" (Bonferroni-adjusted alpha {comparison_alpha:.3g}: {alpha:g} over "
        f"{len(comparisons)} comparisons)"
        if len(comparisons) > 1
        else ""
    )

    better = [c for c in comparisons if c.significant and c.difference > 0]
    if better:
        # Highest estimate first; a tie goes to the stronger evidence, then to variant order.
        best = max(better, key=lambda c: (_estimate(by_name[c.variant]), -c.test.p_value))
        winner = by_name[best.variant]
        return winner.name, (
            f"{winner.name} is better than {control.name}: {label} "
            f"{value_text(winner.estimate)} vs {value_text(control.estimate)}, {p_text(best.test.p_value)}"
            f"{adjusted}"
        )

    if all(c.significant and c.difference < 0 for c in comparisons):
        # Every comparison is significant here, so the largest p-value bounds them all.
        weakest = max(comparisons, key=lambda c: c.test.p_value)
        runner_up = max((by_name[c.variant] for c in comparisons), key=_estimate)
        others = runner_up.name if len(comparisons) == 1 else "every other variant"
        return control.name, (
            f"{control.name} is better than {others}: {label} {value_text(control.estimate)} vs "
            f"{value_text(runner_up.estimate)}{'' if len(comparisons) == 1 else ' at best'}, "
            f"{p_text(weakest.test.p_value, bound=len(comparisons) > 1)}{adjusted}"
        )

    level = (
        f"at the Bonferroni-adjusted alpha {comparison_alpha:.3g} ({alpha:g} over "
        f"{len(comparisons)} comparisons)"
        if len(comparisons) > 1
        else f"at alpha {alpha:g}"
    )
    worse = [c.variant for c in comparisons if c.significant]
    if worse:
        # The control beats some variants but not all: keeping it is not yet justified either.
        undecided = ", ".join(
            f"{c.variant} ({p_text(c.test.p_value)})" for c in comparisons if not c.significant
        )
        return None, (
            f"no variant is significantly better than {control.name}, and {control.name} is "
            f"significantly better than {', '.join(worse)} but not than {undecided} {level}"
        )
    strongest = min(comparisons, key=lambda c: c.test.p_value)
    smallest = "smallest " if len(comparisons) > 1 else ""
    return None, f"not significant {level} ({smallest}{p_text(strongest.test.p_value)})"


def _estimate(row: VariantRow) -> float:
    # Only called for rows that passed a significant test, which needs an estimate.
    return row.estimate if row.estimate is not None else -math.inf
