"""The statistics behind canary analysis and A/B experiments: pure functions, no I/O.

A `RouteWindow` is what one route (a version behind an endpoint) did over a window: the
difference of two snapshots of running totals (`later.minus(earlier)`). From two windows,
`judge_canary` decides whether a canary may be promoted (pass), must be rolled back (fail) or
needs more traffic (wait); from one window per variant, `experiment_report` estimates the outcome
metric of each variant, compares every variant with the control and recommends one when the
evidence allows.

Rates are fractions in [0, 1]; latencies are seconds in windows and milliseconds in checks and
reports (the unit people set limits in). Every result is finite or None, never NaN, so that it
can be stored as JSON and shown as is.

Normal-distribution quantities come from the standard library, so judging a canary never imports
scipy; the t distribution (mean intervals, Welch's test) needs `scipy.special`, imported on first
use.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Any, Literal, cast

from berth.observability.buckets import LATENCY_BUCKETS

Alternative = Literal["two-sided", "greater", "less"]
Status = Literal["pass", "fail", "wait"]
Metric = Literal["accuracy", "outcome"]

_ALTERNATIVES = ("two-sided", "greater", "less")
_METRICS = ("accuracy", "outcome")
_BUCKET_COUNT = len(LATENCY_BUCKETS) + 1


# --------------------------------------------------------------------------------------------
# Windows of traffic
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteWindow:
    """Traffic of one route over a window (differences of running totals).

    A window is internally consistent: counts are non-negative, `errors <= requests`,
    `correct <= labelled`, sums are finite and `latency_counts` is either empty (no data) or has
    one count per bucket of `LATENCY_BUCKETS` plus the final +Inf bucket. The constructor raises
    ValueError otherwise, so no statistic below has to guard against impossible inputs.
    """

    requests: int = 0
    errors: int = 0
    """Server-side failures."""
    latency_counts: tuple[int, ...] = ()
    """Non-cumulative count per bucket of LATENCY_BUCKETS, then +Inf; () when there is no data.

    Bucket i counts latencies <= LATENCY_BUCKETS[i] and > LATENCY_BUCKETS[i - 1]. Only answered
    requests are observed, so the total may be smaller than `requests`.
    """
    latency_sum: float = 0.0
    """Seconds, summed over the observed latencies."""
    labelled: int = 0
    """Predictions with feedback."""
    correct: int = 0
    """Of the labelled predictions, the correct ones."""
    outcome_count: int = 0
    """Numeric outcomes posted as feedback."""
    outcome_sum: float = 0.0
    outcome_sum_squares: float = 0.0

    def __post_init__(self) -> None:
        for name in ("requests", "errors", "labelled", "correct", "outcome_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) exceed requests ({self.requests})")
        if self.correct > self.labelled:
            raise ValueError(f"correct ({self.correct}) exceeds labelled ({self.labelled})")
        if self.latency_counts and len(self.latency_counts) != _BUCKET_COUNT:
            raise ValueError(
                f"latency_counts needs {_BUCKET_COUNT} buckets (LATENCY_BUCKETS and +Inf), "
                f"got {len(self.latency_counts)}"
            )
        if any(count < 0 for count in self.latency_counts):
            raise ValueError("latency_counts must not be negative")
        for name in ("latency_sum", "outcome_sum", "outcome_sum_squares"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.latency_sum < 0 or self.outcome_sum_squares < 0:
            raise ValueError("latency_sum and outcome_sum_squares must not be negative")

    def minus(self, earlier: RouteWindow) -> RouteWindow:
        """What happened between `earlier` and this snapshot of the same running totals.

        A counter that went down was reset (e.g. the totals of a process were pruned), and its
        difference is clamped at 0. The counters come in three groups that are counted together:
        traffic (requests, errors, latency histogram and sum), labelled feedback (labelled,
        correct) and numeric outcomes (count, sum, sum of squares). When any counter of a group
        went down the whole group reads 0, because a rate or a mean built from a clamped part
        and an unclamped part would be meaningless (e.g. more errors than requests). Only counts
        signal a reset: float sums are added up over processes in no fixed order, so an
        unchanged total may come back a rounding error smaller, and the outcome sum goes down
        legitimately when outcomes are negative. A window without new observations has sums of
        exactly 0 for the same reason.
        """
        traffic_reset = (
            self.requests < earlier.requests
            or self.errors < earlier.errors
            or (
                bool(self.latency_counts)
                and bool(earlier.latency_counts)
                and any(
                    a < b for a, b in zip(self.latency_counts, earlier.latency_counts, strict=True)
                )
            )
        )
        latency_counts: tuple[int, ...]
        if traffic_reset:
            requests, errors, latency_counts, latency_sum = 0, 0, (), 0.0
        else:
            requests = self.requests - earlier.requests
            # A source that snapshots errors and requests separately could see an error whose
            # request fell before the earlier snapshot; a window never holds more errors.
            errors = min(self.errors - earlier.errors, requests)
            if self.latency_counts and earlier.latency_counts:
                latency_counts = tuple(
                    a - b for a, b in zip(self.latency_counts, earlier.latency_counts, strict=True)
                )
            else:
                # Nothing observed earlier counts as zeros; nothing observed now is no data.
                latency_counts = self.latency_counts
            latency_sum = (
                max(self.latency_sum - earlier.latency_sum, 0.0) if any(latency_counts) else 0.0
            )

        if self.labelled < earlier.labelled or self.correct < earlier.correct:
            labelled, correct = 0, 0
        else:
            labelled = self.labelled - earlier.labelled
            correct = min(self.correct - earlier.correct, labelled)

        if self.outcome_count <= earlier.outcome_count:
            # Also with no new outcomes: the sums would differ only by rounding noise.
            outcome_count, outcome_sum, outcome_sum_squares = 0, 0.0, 0.0
        else:
            outcome_count = self.outcome_count - earlier.outcome_count
            outcome_sum = self.outcome_sum - earlier.outcome_sum
            outcome_sum_squares = max(self.outcome_sum_squares - earlier.outcome_sum_squares, 0.0)

        return RouteWindow(
            requests=requests,
            errors=errors,
            latency_counts=latency_counts,
            latency_sum=latency_sum,
            labelled=labelled,
            correct=correct,
            outcome_count=outcome_count,
            outcome_sum=outcome_sum,
            outcome_sum_squares=outcome_sum_squares,
        )

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def observed_latencies(self) -> int:
        """How many latencies the histogram holds (answered requests)."""
        return sum(self.latency_counts)

    @property
    def mean_latency_seconds(self) -> float | None:
        """Mean of the observed latencies; None without histogram data.

        Divided by the histogram's count rather than `requests`: failed requests add to
        `requests` but not to the latency sum.
        """
        observed = self.observed_latencies
        return self.latency_sum / observed if observed else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def outcome_mean(self) -> float | None:
        return self.outcome_sum / self.outcome_count if self.outcome_count else None

    @property
    def outcome_variance(self) -> float | None:
        """Sample variance (n - 1) of the numeric outcomes; None with fewer than two."""
        n = self.outcome_count
        if n < 2:
            return None
        centred = self.outcome_sum_squares - self.outcome_sum * self.outcome_sum / n
        # From running sums the subtraction can cancel to a tiny negative number.
        return max(centred / (n - 1), 0.0)

    def latency_quantile(self, q: float) -> float | None:
        """The q-quantile of the observed latencies, in seconds; None without data.

        Estimated as Prometheus' `histogram_quantile` does: find the bucket holding the rank
        q * count and interpolate linearly inside it, the first bucket starting at 0. A rank in
        the +Inf bucket gives the largest finite bound, the only value known to be exceeded.
        Empty buckets are skipped so that q = 0 gives the lower bound of the first non-empty
        bucket rather than a division by zero.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        total = self.observed_latencies
        if total == 0:
            return None
        rank = q * total
        below = 0
        for index, count in enumerate(self.latency_counts):
            if count > 0 and below + count >= rank:
                if index == len(LATENCY_BUCKETS):
                    return LATENCY_BUCKETS[-1]
                start = LATENCY_BUCKETS[index - 1] if index > 0 else 0.0
                end = LATENCY_BUCKETS[index]
                return start + (end - start) * (rank - below) / count
            below += count
        return LATENCY_BUCKETS[-1]  # not reached: the last non-empty bucket holds rank <= total

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_counts": list(self.latency_counts),
            "latency_sum": self.latency_sum,
            "labelled": self.labelled,
            "correct": self.correct,
            "outcome_count": self.outcome_count,
            "outcome_sum": self.outcome_sum,
            "outcome_sum_squares": self.outcome_sum_squares,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouteWindow:
        """Inverse of `to_dict`. Missing keys take their defaults and unknown keys are ignored,
        so windows stored by an older or newer release still load."""
        return cls(
            requests=int(d.get("requests", 0)),
            errors=int(d.get("errors", 0)),
            latency_counts=tuple(int(c) for c in d.get("latency_counts") or ()),
            latency_sum=float(d.get("latency_sum", 0.0)),
            labelled=int(d.get("labelled", 0)),
            correct=int(d.get("correct", 0)),
            outcome_count=int(d.get("outcome_count", 0)),
            outcome_sum=float(d.get("outcome_sum", 0.0)),
            outcome_sum_squares=float(d.get("outcome_sum_squares", 0.0)),
        )


# --------------------------------------------------------------------------------------------
# Intervals and tests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestResult:
    """The outcome of a hypothesis test. Degenerate inputs give statistic 0 and p-value 1."""

    # The name starts with "Test": without this, pytest would try to collect it in every test
    # module that imports it.
    __test__ = False

    name: str
    statistic: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "statistic": self.statistic, "p_value": self.p_value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TestResult:
        return cls(str(d["name"]), float(d["statistic"]), float(d["p_value"]))


_Z_TEST = "two-proportion z-test"
_WELCH = "Welch t-test"
_STANDARD_NORMAL = NormalDist()


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: (0, 1) when n is 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage near 0 and
    1, where error rates and accuracies live.
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # Exact ends at 0 and n: rounding would otherwise leave e.g. 0.9999999999999999.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(
    mean: float, variance: float, n: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Student-t interval of a mean from its sample variance (n - 1).

    With fewer than two samples the variance is unknown and the interval is the whole real line
    (-inf, inf); callers that store intervals should show "not computable" instead.
    """
    _check_confidence(confidence)
    if not (math.isfinite(mean) and math.isfinite(variance)) or variance < 0:
        raise ValueError(f"need a finite mean and a non-negative variance, got {mean}, {variance}")
    if n < 2:
        return -math.inf, math.inf
    half = _t_ppf(0.5 + confidence / 2, n - 1) * math.sqrt(variance / n)
    return mean - half, mean + half


def two_proportion_z_test(
    x1: int, n1: int, x2: int, n2: int, alternative: Alternative = "two-sided"
) -> TestResult:
    """Pooled two-proportion z-test of x1/n1 against x2/n2; "greater" tests p1 > p2.

    The pooled standard error is the one under the null hypothesis p1 = p2, which is what the
    p-value assumes. Equivalent to the chi-squared test of the 2x2 table without continuity
    correction (z squared is its statistic). An empty sample, or a pooled proportion of 0 or 1
    (nothing to tell apart), gives statistic 0 and p-value 1.
    """
    _check_alternative(alternative)
    for x, n in ((x1, n1), (x2, n2)):
        if n < 0 or not 0 <= x <= n:
            raise ValueError(f"need 0 <= successes <= n, got {x} of {n}")
    if n1 == 0 or n2 == 0:
        return TestResult(_Z_TEST, 0.0, 1.0)
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return TestResult(_Z_TEST, 0.0, 1.0)
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return TestResult(_Z_TEST, z, _normal_p_value(z, alternative))


def welch_t_test(
    mean1: float,
    var1: float,
    n1: int,
    mean2: float,
    var2: float,
    n2: int,
    alternative: Alternative = "two-sided",
) -> TestResult:
    """Welch's unequal-variance t-test of mean1 against mean2; "greater" tests mean1 > mean2.

    Degrees of freedom by the Welch-Satterthwaite equation. Fewer than two samples on a side
    (no variance) or zero variance on both sides gives statistic 0 and p-value 1: with no
    spread there is no noise model to judge a difference against.
    """
    _check_alternative(alternative)
    values = (mean1, var1, mean2, var2)
    if not all(math.isfinite(v) for v in values) or var1 < 0 or var2 < 0:
        raise ValueError("need finite means and non-negative variances")
    if n1 < 2 or n2 < 2:
        return TestResult(_WELCH, 0.0, 1.0)
    se1, se2 = var1 / n1, var2 / n2
    se = se1 + se2
    if se <= 0:
        return TestResult(_WELCH, 0.0, 1.0)
    t = (mean1 - mean2) / math.sqrt(se)
    df = se * se / (se1 * se1 / (n1 - 1) + se2 * se2 / (n2 - 1))
    if alternative == "two-sided":
        p = 2 * _t_cdf(-abs(t), df)
    elif alternative == "greater":
        p = _t_cdf(-t, df)
    else:
        p = _t_cdf(t, df)
    return TestResult(_WELCH, t, min(p, 1.0))


def _normal_p_value(z: float, alternative: str) -> float:
    if alternative == "two-sided":
        p = 2 * _normal_sf(abs(z))
    elif alternative == "greater":
        p = _normal_sf(z)
    else:
        p = _normal_sf(-z)
    return min(p, 1.0)


def _normal_sf(z: float) -> float:
    # erfc keeps its precision far in the upper tail, where 1 - cdf would round to 0.
    return 0.5 * math.erfc(z / math.sqrt(2))


@functools.cache
def _special() -> Any:
    # scipy ships no type stubs (and is not in the mypy overrides), and importing it costs
    # about a third of a second: imported untyped, on first use.
    return importlib.import_module("scipy.special")


def _t_cdf(t: float, df: float) -> float:
    return float(_special().stdtr(df, t))


def _t_ppf(p: float, df: float) -> float:
    return float(_special().stdtrit(df, p))


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(_ALTERNATIVES)}")


# --------------------------------------------------------------------------------------------
# Canary analysis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryCriteria:
    """What a canary must show before it is promoted. Unset limits are not checked."""

    min_requests: int = 100
    """Canary requests before the error rate and latency are judged at all."""
    max_error_rate: float | None = None
    """Fraction of failed requests, e.g. 0.01."""
    max_p99_ms: float | None = None
    """Absolute p99 limit. Above it the canary fails only when it is also slower than stable
    by `max_p99_ratio` (as the error rate fails only when worse than stable), unless the ratio
    is 0: then the limit alone decides."""
    max_p99_ratio: float = 1.5
    """The canary's p99 may be at most this many times stable's p99 in the same window (plus
    `p99_slack_ms`); 0 turns the comparison off. Judging against stable means a machine that is
    slow for every version rolls nothing back."""
    p99_slack_ms: float = 10.0
    """Added to stable's p99 times the ratio, so that tiny latencies, where one histogram bucket
    is a factor of 2.5, do not fail on a few milliseconds nobody notices."""
    min_accuracy: float | None = None
    """Fraction of correct labelled predictions, e.g. 0.9."""
    min_feedback: int = 30
    """Labelled canary predictions before accuracy is judged."""
    alpha: float = 0.05
    """Significance level of every one-sided decision."""

    def __post_init__(self) -> None:
        if self.min_requests < 0 or self.min_feedback < 0:
            raise ValueError("min_requests and min_feedback must not be negative")
        # One-sided bounds at level 1 - alpha are two-sided intervals at 1 - 2 alpha.
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be within (0, 0.5), got {self.alpha}")
        for name in ("max_error_rate", "min_accuracy"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction within [0, 1], got {value}")
        if self.max_p99_ms is not None and not self.max_p99_ms > 0:
            raise ValueError(f"max_p99_ms must be positive, got {self.max_p99_ms}")
        if not (self.max_p99_ratio == 0 or 1 <= self.max_p99_ratio < math.inf):
            raise ValueError(
                f"max_p99_ratio must be at least 1 (or 0 for no comparison with stable), "
                f"got {self.max_p99_ratio}"
            )
        if not 0 <= self.p99_slack_ms < math.inf:
            raise ValueError(f"p99_slack_ms must not be negative, got {self.p99_slack_ms}")

    def enough_latencies(self, window: RouteWindow) -> bool:
        """Whether a window's p99 can be compared with: held to the canary's minimum, since a
        p99 of a handful of requests is noise."""
        return window.observed_latencies >= max(self.min_requests, 1)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CanaryCriteria:
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are ignored."""
        default = cls()
        return cls(
            min_requests=int(d.get("min_requests", default.min_requests)),
            max_error_rate=_optional_float(d.get("max_error_rate")),
            max_p99_ms=_optional_float(d.get("max_p99_ms")),
            max_p99_ratio=float(d.get("max_p99_ratio", default.max_p99_ratio)),
            p99_slack_ms=float(d.get("p99_slack_ms", default.p99_slack_ms)),
            min_accuracy=_optional_float(d.get("min_accuracy")),
            min_feedback=int(d.get("min_feedback", default.min_feedback)),
            alpha=float(d.get("alpha", default.alpha)),
        )


@dataclass(frozen=True)
class Check:
    """One criterion's result. `value` and `threshold` are in the check's unit: a count for
    "requests", a fraction for "error rate" and "accuracy", milliseconds for "p99 latency"."""

    name: str
    status: Status
    value: float | None
    threshold: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        status = str(d["status"])
        if status not in ("pass", "fail", "wait"):
            raise ValueError(f"unknown check status {status!r}")
        return cls(
            name=str(d["name"]),
            status=cast(Status, status),
            value=_optional_float(d.get("value")),
            threshold=_optional_float(d.get("threshold")),
            detail=str(d.get("detail", "")),
        )


@dataclass(frozen=True)
class Verdict:
    decision: Status
    checks: tuple[Check, ...]

    @property
    def reasons(self) -> list[str]:
        """Why the decision is what it is: the failing checks' details when it is fail, the
        waiting ones' when it is wait, nothing when it is pass."""
        if self.decision == "pass":
            return []
        return [check.detail for check in self.checks if check.status == self.decision]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "checks": [check.to_dict() for check in self.checks],
            "reasons": self.reasons,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        checks = tuple(Check.from_dict(c) for c in d.get("checks", ()))
        return cls(decision=_decide(checks), checks=checks)


def judge_canary(
    stable: RouteWindow | None,
    canary: RouteWindow,
    criteria: CanaryCriteria,
    stable_before: RouteWindow | None = None,
) -> Verdict:
    """Judge a canary's window against the criteria and, where it helps, the stable route's.

    Checks, in order (a check whose limit is unset is left out):

    - "requests": fewer than `min_requests` canary requests -> wait ("N of M requests so far"),
      else pass. Until it passes, "error rate" and "p99 latency" wait too.
    - "error rate" (`max_error_rate` set): with no canary requests at all -> wait. Canary rate
      <= max -> pass. Canary rate > max:
        - stable is None or has no requests: compare with the limit alone. The one-sided
          (1 - alpha) Wilson lower bound of the canary rate > max -> fail, else wait.
        - otherwise a one-sided pooled two-proportion z-test of canary errors > stable errors:
          p < alpha -> fail; not significant and stable's own rate > max too -> pass (stable
          fails as often, so rolling back would not help); otherwise wait for more evidence.
    - "p99 latency" (`max_p99_ratio` > 0 with a stable window, or `max_p99_ms` set): no
      canary latency observed yet -> wait (pass when only the comparison applies: every
      request failed, which is the error rate's business). The canary's p99 (histogram
      estimate, in ms) is compared with the bound `stable p99 * max_p99_ratio + p99_slack_ms`
      from the same window, as the error rate is compared with stable's: a machine slow for
      every version is no reason to roll back. Stable needs `min_requests` observed latencies
      in the window; else `stable_before` (stable's window at an earlier step, for the last
      step, where stable gets no traffic) is used when it has enough; else there is no
      comparison:
        - no `max_p99_ms`: above the bound -> fail, else pass; no comparison -> pass (nothing
          says the canary is slow).
        - `max_p99_ms` set: canary p99 <= max -> pass. Above it: over the bound too -> fail;
          within the bound -> pass (stable is as slow, rolling back would not help); no
          comparison (or a ratio of 0) -> fail.
    - "accuracy" (`min_accuracy` set): fewer than `min_feedback` labelled canary predictions (or
      none) -> wait; accuracy >= min -> pass; the one-sided (1 - alpha) Wilson upper bound
      < min -> fail (significantly below); else wait.

    Decision: any check fails -> fail; else any waits -> wait; else pass.

    "One-sided (1 - alpha)" bounds are the ends of the two-sided (1 - 2 alpha) interval, so a
    fail from a bound has the same error rate, alpha, as a fail from the z-test.
    """
    checks = [_requests_check(canary, criteria)]
    enough = canary.requests >= criteria.min_requests
    if criteria.max_error_rate is not None:
        checks.append(_error_rate_check(stable, canary, criteria.max_error_rate, criteria, enough))
    compares_latency = stable is not None and criteria.max_p99_ratio > 0
    if criteria.max_p99_ms is not None or compares_latency:
        checks.append(_latency_check(stable, canary, criteria, enough, stable_before))
    if criteria.min_accuracy is not None:
        checks.append(_accuracy_check(canary, criteria.min_accuracy, criteria))
    final = tuple(checks)
    return Verdict(decision=_decide(final), checks=final)


def _decide(checks: Sequence[Check]) -> Status:
    statuses = {check.status for check in checks}
    if "fail" in statuses:
        return "fail"
    if "wait" in statuses:
        return "wait"
    return "pass"


def _requests_check(canary: RouteWindow, criteria: CanaryCriteria) -> Check:
    n, minimum = canary.requests, criteria.min_requests
    if n < minimum:
        return Check("requests", "wait", n, minimum, f"{n} of {minimum} requests so far")
    return Check("requests", "pass", n, minimum, f"{n} requests (minimum {minimum})")


def _error_rate_check(
    stable: RouteWindow | None,
    canary: RouteWindow,
    limit: float,
    criteria: CanaryCriteria,
    enough: bool,
) -> Check:
    def check(status: Status, detail: str) -> Check:
        return Check("error rate", status, rate, limit, detail)

    rate = canary.error_rate
    if not enough:
        return check(
            "wait",
            f"error rate waits for {criteria.min_requests} requests ({canary.requests} so far)",
        )
    if rate is None:
        return check("wait", "no canary requests yet")
    if rate <= limit:
        return check("pass", f"canary {_percent(rate)} errors, within the {_percent(limit)} limit")

    if stable is None or stable.requests == 0:
        low, _ = wilson_interval(canary.errors, canary.requests, 1 - 2 * criteria.alpha)
        bound = f"at least {_percent(low)} with {_confidence(criteria.alpha)} confidence"
        if low > limit:
            return check(
                "fail",
                f"canary {_percent(rate)} errors ({bound}), above the {_percent(limit)} limit; "
                "no stable traffic to compare with",
            )
        return check(
            "wait",
            f"canary {_percent(rate)} errors, above the {_percent(limit)} limit but not "
            f"significantly ({bound}); no stable traffic to compare with",
        )

    stable_rate = stable.errors / stable.requests
    test = two_proportion_z_test(
        canary.errors, canary.requests, stable.errors, stable.requests, "greater"
    )
    versus = (
        f"canary {_percent(rate)} errors vs stable {_percent(stable_rate)} "
        f"(z={test.statistic:.1f}, {_p(test.p_value)})"
    )
    if test.p_value < criteria.alpha:
        return check("fail", f"{versus}, above the {_percent(limit)} limit")
    if stable_rate > limit:
        return check(
            "pass",
            f"{versus}: above the {_percent(limit)} limit, but stable fails as often",
        )
    return check(
        "wait",
        f"{versus}: above the {_percent(limit)} limit but not significantly worse than stable "
        f"at alpha {criteria.alpha:g} yet",
    )


def _latency_check(
    stable: RouteWindow | None,
    canary: RouteWindow,
    criteria: CanaryCriteria,
    enough: bool,
    stable_before: RouteWindow | None = None,
) -> Check:
    limit_ms, ratio = criteria.max_p99_ms, criteria.max_p99_ratio
    p99_ms = _p99_ms(canary)

    def check(status: Status, detail: str, threshold: float | None = limit_ms) -> Check:
        return Check("p99 latency", status, p99_ms, threshold, detail)

    if not enough:
        return check(
            "wait",
            f"p99 latency waits for {criteria.min_requests} requests ({canary.requests} so far)",
        )
    if p99_ms is None:
        if limit_ms is None:
            # Only the comparison applies, and every canary request failed: the error rate
            # speaks to that; latency has nothing to add.
            return check("pass", "no canary latency observed to compare with stable")
        return check("wait", "no canary latency observed yet")
    canary_p99 = f"canary p99 {_ms(p99_ms)}"
    if limit_ms is not None and p99_ms <= limit_ms:
        return check("pass", f"{canary_p99}, within the {_ms(limit_ms)} limit")

    when = "in the same window"
    stable_ms = None
    if stable is not None and ratio > 0:
        if criteria.enough_latencies(stable):
            stable_ms = _p99_ms(stable)
        elif stable_before is not None and criteria.enough_latencies(stable_before):
            stable_ms = _p99_ms(stable_before)
            when = "at the previous step (too little stable traffic in this one)"
    if stable_ms is None:
        if limit_ms is None:
            observed = stable.observed_latencies if stable is not None else 0
            return check(
                "pass",
                f"{canary_p99}; too little stable traffic in this window to compare with "
                f"({observed} of {max(criteria.min_requests, 1)} requests)",
            )
        above = f"{canary_p99}, above the {_ms(limit_ms)} limit"
        return check("fail", above if ratio == 0 else f"{above}; no stable traffic to compare with")

    bound = stable_ms * ratio + criteria.p99_slack_ms
    slack = f" + {criteria.p99_slack_ms:g} ms" if criteria.p99_slack_ms else ""
    rule = f"{ratio:g}x stable{slack} ({_ms(bound)})"
    versus = f"{canary_p99} vs stable {_ms(stable_ms)} {when}"
    if limit_ms is None:
        if p99_ms > bound:
            return check("fail", f"{versus}: above {rule}", bound)
        return check("pass", f"{versus}: within {rule}", bound)
    if p99_ms > bound:
        return check("fail", f"{versus}: above the {_ms(limit_ms)} limit and {rule}", bound)
    return check(
        "pass",
        f"{versus}: above the {_ms(limit_ms)} limit, but within {rule}: stable is as slow, "
        "so rolling back would not help",
        bound,
    )


def _p99_ms(window: RouteWindow) -> float | None:
    p99 = window.latency_quantile(0.99)
    return None if p99 is None else p99 * 1000


def _accuracy_check(canary: RouteWindow, minimum: float, criteria: CanaryCriteria) -> Check:
    def check(status: Status, detail: str) -> Check:
        return Check("accuracy", status, accuracy, minimum, detail)

    accuracy, n = canary.accuracy, canary.labelled
    if n < criteria.min_feedback:
        return check("wait", f"{n} of {criteria.min_feedback} labelled predictions so far")
    if accuracy is None:
        return check("wait", "no labelled predictions yet")
    observed = f"canary accuracy {accuracy:.3f} on {n} labelled predictions"
    if accuracy >= minimum:
        return check("pass", f"{observed}, meeting the {minimum:.3f} minimum")
    _, high = wilson_interval(canary.correct, n, 1 - 2 * criteria.alpha)
    bound = f"at most {high:.3f} with {_confidence(criteria.alpha)} confidence"
    if high < minimum:
        return check("fail", f"{observed} ({bound}), below the {minimum:.3f} minimum")
    return check(
        "wait", f"{observed}, below the {minimum:.3f} minimum but not significantly ({bound})"
    )


# --------------------------------------------------------------------------------------------
# Experiment report
# --------------------------------------------------------------------------------------------


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
            f"{_value(winner.estimate)} vs {_value(control.estimate)}, {_p(best.test.p_value)}"
            f"{adjusted}"
        )

    if all(c.significant and c.difference < 0 for c in comparisons):
        # Every comparison is significant here, so the largest p-value bounds them all.
        weakest = max(comparisons, key=lambda c: c.test.p_value)
        runner_up = max((by_name[c.variant] for c in comparisons), key=_estimate)
        others = runner_up.name if len(comparisons) == 1 else "every other variant"
        return control.name, (
            f"{control.name} is better than {others}: {label} {_value(control.estimate)} vs "
            f"{_value(runner_up.estimate)}{'' if len(comparisons) == 1 else ' at best'}, "
            f"{_p(weakest.test.p_value, bound=len(comparisons) > 1)}{adjusted}"
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
            f"{c.variant} ({_p(c.test.p_value)})" for c in comparisons if not c.significant
        )
        return None, (
            f"no variant is significantly better than {control.name}, and {control.name} is "
            f"significantly better than {', '.join(worse)} but not than {undecided} {level}"
        )
    strongest = min(comparisons, key=lambda c: c.test.p_value)
    smallest = "smallest " if len(comparisons) > 1 else ""
    return None, f"not significant {level} ({smallest}{_p(strongest.test.p_value)})"


def _estimate(row: VariantRow) -> float:
    # Only called for rows that passed a significant test, which needs an estimate.
    return row.estimate if row.estimate is not None else -math.inf


# --------------------------------------------------------------------------------------------
# Formatting for details and explanations
# --------------------------------------------------------------------------------------------


def _percent(fraction: float) -> str:
    value = fraction * 100
    if 0 < value < 0.1:
        # 0.0% would read as "no errors at all".
        return f"{value:.2g}%"
    return f"{value:.1f}%"


def _confidence(alpha: float) -> str:
    return f"{(1 - alpha) * 100:g}%"


def _p(p_value: float, bound: bool = False) -> str:
    if p_value < 0.001:
        return "p<0.001"
    return f"p{'<=' if bound else '='}{p_value:.2g}"


def _ms(milliseconds: float) -> str:
    if milliseconds >= 100:
        return f"{milliseconds:.0f} ms"
    if milliseconds >= 10:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:.2g} ms"


def _value(estimate: float | None) -> str:
    if estimate is None:
        return "n/a"
    if abs(estimate) >= 10_000:
        return f"{estimate:,.0f}"
    return f"{estimate:.3g}"


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
