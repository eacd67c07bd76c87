"""Canary analysis and A/B experiment statistics, checked against independent references.

References are computed here, not taken from the module: scipy's t distribution, Welch test and
chi-squared test of the 2x2 table (its statistic is z squared of the pooled two-proportion
z-test), numpy's percentiles and moments of generated samples, and published Wilson intervals.
All randomness is seeded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from scipy import stats

from berth.observability.metrics import LATENCY_BUCKETS
from berth.rollouts import experiment_analysis, statistics
from berth.rollouts.canary_analysis import CanaryCriteria, Check, Verdict, judge_canary
from berth.rollouts.experiment_analysis import ExperimentReport, VariantSample, experiment_report
from berth.rollouts.statistics import (
    mean_interval,
    two_proportion_z_test,
    welch_t_test,
    wilson_interval,
)
from berth.serving.route_window import RouteWindow

BUCKETS = len(LATENCY_BUCKETS) + 1


def latency_window(seconds: np.ndarray, errors: int = 0) -> RouteWindow:
    """A window whose histogram holds these latencies, bucketed as the server does."""
    # side="left": bucket i holds values <= LATENCY_BUCKETS[i]; past the last bound is +Inf.
    index = np.searchsorted(np.asarray(LATENCY_BUCKETS), seconds, side="left")
    counts = np.bincount(index, minlength=BUCKETS)
    return RouteWindow(
        requests=len(seconds) + errors,
        errors=errors,
        latency_counts=tuple(int(c) for c in counts),
        latency_sum=float(seconds.sum()),
    )


def outcome_window(values: np.ndarray) -> RouteWindow:
    return RouteWindow(
        outcome_count=len(values),
        outcome_sum=float(values.sum()),
        outcome_sum_squares=float((values**2).sum()),
    )


def one_bucket(index: int, count: int) -> tuple[int, ...]:
    counts = [0] * BUCKETS
    counts[index] = count
    return tuple(counts)


def strict_json(data: dict[str, Any]) -> str:
    # allow_nan=False: a NaN or an infinity anywhere is an error, not invalid JSON in the database.
    return json.dumps(data, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Wilson interval
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        (8, 10, (0.4902, 0.9433)),
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (1, 2, (0.0945, 0.9055)),
        (81, 263, (0.2553, 0.3662)),
    ],
)
def test_wilson_interval_known_values(
    successes: int, n: int, expected: tuple[float, float]
) -> None:
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=1e-4)
    assert high == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_ends_are_exact() -> None:
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_bounds_solve_the_score_equation() -> None:
    # By definition, the Wilson bounds are the p where the score statistic |p_hat - p| /
    # sqrt(p (1 - p) / n) equals the normal quantile.
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 5000))
        successes = int(rng.integers(0, n + 1))
        confidence = float(rng.uniform(0.5, 0.999))
        z = stats.norm.ppf(0.5 + confidence / 2)
        p_hat = successes / n
        for bound in wilson_interval(successes, n, confidence):
            residual = (p_hat - bound) ** 2 - z * z * bound * (1 - bound) / n
            assert residual == pytest.approx(0.0, abs=1e-9)


def test_wilson_interval_narrows_with_confidence() -> None:
    wide = wilson_interval(30, 100, 0.99)
    narrow = wilson_interval(30, 100, 0.90)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


@pytest.mark.parametrize(
    ("successes", "n", "confidence"), [(11, 10, 0.95), (-1, 10, 0.95), (1, 10, 1.0), (1, 10, 0.0)]
)
def test_wilson_interval_rejects_impossible_input(
    successes: int, n: int, confidence: float
) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, n, confidence)


# --------------------------------------------------------------------------------------------
# Mean interval
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "confidence"), [(2, 0.95), (12, 0.9), (500, 0.99)])
def test_mean_interval_matches_scipy_t_interval(n: int, confidence: float) -> None:
    sample = np.random.default_rng(n).normal(3.0, 2.0, size=n)
    mean, variance = float(sample.mean()), float(sample.var(ddof=1))
    expected = stats.t.interval(confidence, n - 1, loc=mean, scale=math.sqrt(variance / n))
    assert mean_interval(mean, variance, n, confidence) == pytest.approx(expected, rel=1e-9)


def test_mean_interval_degenerate() -> None:
    assert mean_interval(5.0, 0.0, 40) == (5.0, 5.0)
    # One sample says nothing about spread: the interval is unbounded, not NaN.
    assert mean_interval(5.0, 0.0, 1) == (-math.inf, math.inf)
    assert mean_interval(0.0, 0.0, 0) == (-math.inf, math.inf)
    with pytest.raises(ValueError):
        mean_interval(1.0, -0.1, 10)
    with pytest.raises(ValueError):
        mean_interval(math.nan, 1.0, 10)


# --------------------------------------------------------------------------------------------
# Two-proportion z-test
# --------------------------------------------------------------------------------------------


def test_two_proportion_z_test_hand_computed() -> None:
    # 45/100 vs 30/100: pooled p = 0.375, se = sqrt(0.375 * 0.625 * (1/100 + 1/100)).
    z = (0.45 - 0.30) / math.sqrt(0.375 * 0.625 * 0.02)
    assert z == pytest.approx(2.190890, abs=1e-6)

    result = two_proportion_z_test(45, 100, 30, 100)
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(0.0284597, abs=1e-7)
    assert two_proportion_z_test(45, 100, 30, 100, "greater").p_value == pytest.approx(
        stats.norm.sf(z), rel=1e-9
    )
    assert two_proportion_z_test(45, 100, 30, 100, "less").p_value == pytest.approx(
        stats.norm.cdf(z), rel=1e-9
    )
    flipped = two_proportion_z_test(30, 100, 45, 100, "less")
    assert flipped.statistic == pytest.approx(-z)
    assert flipped.p_value == pytest.approx(stats.norm.sf(z), rel=1e-9)


def test_two_proportion_z_test_is_the_chi_squared_test_of_the_table() -> None:
    rng = np.random.default_rng(11)
    for _ in range(50):
        n1, n2 = (int(n) for n in rng.integers(20, 3000, size=2))
        x1, x2 = int(rng.integers(1, n1)), int(rng.integers(1, n2))
        table = [[x1, n1 - x1], [x2, n2 - x2]]
        chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
        result = two_proportion_z_test(x1, n1, x2, n2)
        assert result.statistic**2 == pytest.approx(chi2, rel=1e-9)
        assert result.p_value == pytest.approx(p_value, rel=1e-7, abs=1e-300)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [(0, 0, 5, 10), (5, 10, 0, 0), (0, 0, 0, 0), (0, 50, 0, 80), (50, 50, 80, 80)],
)
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_two_proportion_z_test_degenerate(
    x1: int, n1: int, x2: int, n2: int, alternative: statistics.Alternative
) -> None:
    result = two_proportion_z_test(x1, n1, x2, n2, alternative)
    assert (result.statistic, result.p_value) == (0.0, 1.0)


def test_two_proportion_z_test_rejects_impossible_input() -> None:
    with pytest.raises(ValueError):
        two_proportion_z_test(11, 10, 1, 10)
    with pytest.raises(ValueError):
        two_proportion_z_test(1, 10, 1, 10, "bigger")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Welch t-test
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize(("n1", "n2", "seed"), [(5, 40, 1), (30, 30, 2), (400, 90, 3), (2, 3, 4)])
def test_welch_t_test_matches_scipy(
    alternative: statistics.Alternative, n1: int, n2: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(10.3, 1.0, size=n1)
    b = rng.normal(10.0, 3.0, size=n2)
    expected = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
    result = welch_t_test(
        float(a.mean()),
        float(a.var(ddof=1)),
        n1,
        float(b.mean()),
        float(b.var(ddof=1)),
        n2,
        alternative,
    )
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-7)


def test_welch_t_test_with_one_constant_side_matches_scipy() -> None:
    a = np.random.default_rng(5).normal(1.0, 0.5, size=25)
    b = np.full(10, 0.5)
    with warnings.catch_warnings():
        # scipy warns that b is constant, which is the case under test.
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = stats.ttest_ind(a, b, equal_var=False)
    result = welch_t_test(float(a.mean()), float(a.var(ddof=1)), 25, 0.5, 0.0, 10)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-7)


@pytest.mark.parametrize(
    "args",
    [
        (1.0, 0.0, 10, 2.0, 0.0, 10),  # no spread on either side, even with different means
        (1.0, 1.0, 1, 2.0, 1.0, 10),  # one sample: no variance
        (1.0, 1.0, 10, 2.0, 1.0, 0),
        (0.0, 0.0, 0, 0.0, 0.0, 0),
    ],
)
def test_welch_t_test_degenerate(args: tuple[float, float, int, float, float, int]) -> None:
    result = welch_t_test(*args)
    assert (result.statistic, result.p_value) == (0.0, 1.0)


def test_test_result_is_not_collected_by_pytest() -> None:
    assert statistics.TestResult.__test__ is False
    result = statistics.TestResult("x", 1.5, 0.2)
    assert statistics.TestResult.from_dict(json.loads(strict_json(result.to_dict()))) == result


# --------------------------------------------------------------------------------------------
# RouteWindow: statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latency_quantile_within_a_bucket_of_numpy_percentile(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Fast answers plus a slow tail, some beyond the largest bound.
    seconds = np.concatenate(
        [rng.lognormal(math.log(0.004), 0.6, 5000), rng.lognormal(math.log(0.4), 1.2, 300)]
    )
    window = latency_window(seconds)
    bounds = np.asarray(LATENCY_BUCKETS)
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99):
        exact = float(np.percentile(seconds, q * 100))
        estimate = window.latency_quantile(q)
        assert estimate is not None
        bucket = int(np.searchsorted(bounds, exact, side="left"))
        assert bucket < len(LATENCY_BUCKETS), "choose quantiles below the largest bound"
        width = bounds[bucket] - (bounds[bucket - 1] if bucket else 0.0)
        assert abs(estimate - exact) <= width, (q, estimate, exact)


def test_latency_quantile_interpolates_like_prometheus() -> None:
    # 100 latencies in (0.1, 0.25]: linear inside the bucket.
    index = LATENCY_BUCKETS.index(0.25)
    window = RouteWindow(requests=100, latency_counts=one_bucket(index, 100), latency_sum=17.5)
    assert window.latency_quantile(0.5) == pytest.approx(0.175)
    assert window.latency_quantile(0.99) == pytest.approx(0.1 + 0.15 * 0.99)
    assert window.latency_quantile(1.0) == pytest.approx(0.25)
    # q = 0: the lower end of the first non-empty bucket, not a division by an empty bucket.
    assert window.latency_quantile(0.0) == pytest.approx(0.1)
    # The first bucket starts at 0.
    first = RouteWindow(requests=10, latency_counts=one_bucket(0, 10))
    assert first.latency_quantile(0.5) == pytest.approx(LATENCY_BUCKETS[0] / 2)


def test_latency_quantile_in_the_inf_bucket_is_the_largest_bound() -> None:
    counts = list(one_bucket(0, 90))
    counts[-1] = 10
    window = RouteWindow(requests=100, latency_counts=tuple(counts))
    assert window.latency_quantile(0.5) == pytest.approx(LATENCY_BUCKETS[0] * 50 / 90)
    assert window.latency_quantile(0.99) == LATENCY_BUCKETS[-1]
    assert window.latency_quantile(1.0) == LATENCY_BUCKETS[-1]


def test_latency_quantile_without_data() -> None:
    assert RouteWindow().latency_quantile(0.99) is None
    assert (
        RouteWindow(requests=5, errors=5, latency_counts=(0,) * BUCKETS).latency_quantile(0.5)
        is None
    )
    with pytest.raises(ValueError):
        RouteWindow().latency_quantile(1.5)


def test_rates_and_means() -> None:
    seconds = np.random.default_rng(3).uniform(0.001, 0.05, size=180)
    window = latency_window(seconds, errors=20)
    assert window.requests == 200
    assert window.error_rate == pytest.approx(0.1)
    # Failed requests are not in the histogram, so they do not dilute the mean.
    assert window.mean_latency_seconds == pytest.approx(float(seconds.mean()))

    feedback = RouteWindow(labelled=40, correct=30)
    assert feedback.accuracy == pytest.approx(0.75)

    values = np.random.default_rng(4).normal(-3.0, 7.0, size=333)
    outcomes = outcome_window(values)
    assert outcomes.outcome_mean == pytest.approx(float(values.mean()), rel=1e-12)
    assert outcomes.outcome_variance == pytest.approx(float(values.var(ddof=1)), rel=1e-9)


def test_empty_window_statistics_are_none() -> None:
    empty = RouteWindow()
    assert empty.error_rate is None
    assert empty.mean_latency_seconds is None
    assert empty.accuracy is None
    assert empty.outcome_mean is None
    assert empty.outcome_variance is None
    assert (
        RouteWindow(outcome_count=1, outcome_sum=2.0, outcome_sum_squares=4.0).outcome_variance
        is None
    )


def test_outcome_variance_never_negative_from_cancellation() -> None:
    # Identical large outcomes: sum of squares minus sum^2/n cancels to rounding noise.
    values = np.full(1000, 1e6 + 0.1)
    variance = outcome_window(values).outcome_variance
    assert variance is not None
    assert variance >= 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests": -1},
        {"requests": 5, "errors": 6},
        {"labelled": 3, "correct": 4},
        {"latency_counts": (1, 2, 3)},
        {"latency_counts": (-1,) + (0,) * (BUCKETS - 1)},
        {"latency_sum": math.nan},
        {"outcome_sum": math.inf},
    ],
)
def test_route_window_rejects_inconsistent_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RouteWindow(**kwargs)


# --------------------------------------------------------------------------------------------
# RouteWindow: differences and JSON
# --------------------------------------------------------------------------------------------


def test_minus_is_the_element_wise_difference() -> None:
    earlier = RouteWindow(
        requests=100,
        errors=2,
        latency_counts=one_bucket(3, 98),
        latency_sum=0.08,
        labelled=10,
        correct=9,
        outcome_count=4,
        outcome_sum=10.0,
        outcome_sum_squares=30.0,
    )
    later_counts = list(one_bucket(3, 150))
    later_counts[5] = 40
    later = RouteWindow(
        requests=200,
        errors=10,
        latency_counts=tuple(later_counts),
        latency_sum=0.3,
        labelled=30,
        correct=25,
        outcome_count=10,
        outcome_sum=4.0,  # outcomes may be negative: the sum may go down
        outcome_sum_squares=80.0,
    )
    window = later.minus(earlier)
    assert window.requests == 100
    assert window.errors == 8
    assert window.latency_counts[3] == 52
    assert window.latency_counts[5] == 40
    assert sum(window.latency_counts) == 92
    assert window.latency_sum == pytest.approx(0.22)
    assert (window.labelled, window.correct) == (20, 16)
    assert window.outcome_count == 6
    assert window.outcome_sum == pytest.approx(-6.0)
    assert window.outcome_sum_squares == pytest.approx(50.0)
    assert later.minus(later) == RouteWindow(latency_counts=(0,) * BUCKETS)


def test_minus_after_a_traffic_counter_reset_reads_zero() -> None:
    earlier = RouteWindow(
        requests=1000,
        errors=5,
        latency_counts=one_bucket(4, 995),
        latency_sum=2.0,
        labelled=50,
        correct=45,
    )
    # The totals of a process were pruned: traffic went down, feedback kept growing.
    later = RouteWindow(
        requests=300,
        errors=9,
        latency_counts=one_bucket(4, 291),
        latency_sum=0.6,
        labelled=70,
        correct=60,
    )
    window = later.minus(earlier)
    assert (window.requests, window.errors) == (0, 0)
    assert (window.latency_counts, window.latency_sum) == ((), 0.0)
    assert window.error_rate is None
    assert (window.labelled, window.correct) == (20, 15)

    # One latency bucket going down is a reset too, even when requests grew.
    bucket_reset = RouteWindow(
        requests=1100, errors=5, latency_counts=one_bucket(6, 1095), latency_sum=3.0
    ).minus(earlier)
    assert bucket_reset.requests == 0


def test_minus_after_feedback_and_outcome_resets() -> None:
    earlier = RouteWindow(
        requests=10,
        labelled=50,
        correct=45,
        outcome_count=9,
        outcome_sum=9.0,
        outcome_sum_squares=20.0,
    )
    later = RouteWindow(
        requests=20,
        labelled=60,
        correct=40,
        outcome_count=3,
        outcome_sum=30.0,
        outcome_sum_squares=400.0,
    )
    window = later.minus(earlier)
    assert window.requests == 10
    assert (window.labelled, window.correct) == (0, 0)
    assert (window.outcome_count, window.outcome_sum, window.outcome_sum_squares) == (0, 0.0, 0.0)


def test_minus_ignores_rounding_noise_in_sums() -> None:
    # The same totals summed over processes in another order may come back a hair smaller.
    earlier = RouteWindow(
        requests=10,
        latency_counts=one_bucket(2, 10),
        latency_sum=0.3,
        outcome_count=5,
        outcome_sum=0.7,
        outcome_sum_squares=0.3,
    )
    later = RouteWindow(
        requests=10,
        latency_counts=one_bucket(2, 10),
        latency_sum=math.nextafter(0.3, 0),
        outcome_count=5,
        outcome_sum=math.nextafter(0.7, 0),
        outcome_sum_squares=math.nextafter(0.3, 0),
    )
    window = later.minus(earlier)
    assert window.latency_sum == 0.0
    assert (window.outcome_sum, window.outcome_sum_squares) == (0.0, 0.0)
    grown = RouteWindow(
        requests=11, latency_counts=one_bucket(2, 11), latency_sum=math.nextafter(0.3, 0)
    ).minus(RouteWindow(requests=10, latency_counts=one_bucket(2, 10), latency_sum=0.3))
    assert grown.latency_sum == 0.0  # clamped, never negative


def test_minus_with_missing_histograms() -> None:
    counts = one_bucket(1, 7)
    # Nothing observed before counts as zeros.
    assert (
        RouteWindow(requests=7, latency_counts=counts).minus(RouteWindow(requests=2)).latency_counts
        == counts
    )
    # Nothing observed now is no data.
    assert (
        RouteWindow(requests=9).minus(RouteWindow(requests=7, latency_counts=counts)).latency_counts
        == ()
    )


def test_route_window_json_round_trip() -> None:
    seconds = np.random.default_rng(9).exponential(0.02, size=50)
    window = RouteWindow(
        requests=53,
        errors=3,
        latency_counts=latency_window(seconds).latency_counts,
        latency_sum=float(seconds.sum()),
        labelled=20,
        correct=17,
        outcome_count=12,
        outcome_sum=-4.25,
        outcome_sum_squares=99.5,
    )
    stored = strict_json(window.to_dict())
    assert RouteWindow.from_dict(json.loads(stored)) == window
    assert RouteWindow.from_dict(json.loads(strict_json(RouteWindow().to_dict()))) == RouteWindow()
    # Older records lack fields, newer ones may have more.
    assert RouteWindow.from_dict({"requests": 5, "errors": 1, "shadow": 3}) == RouteWindow(
        requests=5, errors=1
    )
    assert RouteWindow.from_dict({"latency_counts": None}) == RouteWindow()


# --------------------------------------------------------------------------------------------
# judge_canary
# --------------------------------------------------------------------------------------------


def check_named(verdict: Verdict, name: str) -> Check:
    (found,) = [check for check in verdict.checks if check.name == name]
    return found


def test_too_few_requests_waits_for_every_traffic_check() -> None:
    criteria = CanaryCriteria(min_requests=100, max_error_rate=0.01, max_p99_ms=50)
    # Even an obviously broken canary is not judged on 50 requests.
    canary = RouteWindow(requests=50, errors=50, latency_counts=(0,) * BUCKETS)
    verdict = judge_canary(RouteWindow(requests=5000), canary, criteria)
    assert verdict.decision == "wait"
    assert [c.status for c in verdict.checks] == ["wait", "wait", "wait"]
    assert check_named(verdict, "requests").detail == "50 of 100 requests so far"
    assert verdict.reasons[0] == "50 of 100 requests so far"
    assert len(verdict.reasons) == 3


def test_requests_only_passes() -> None:
    verdict = judge_canary(None, RouteWindow(requests=100), CanaryCriteria())
    assert verdict.decision == "pass"
    assert [c.name for c in verdict.checks] == ["requests"]
    assert verdict.reasons == []


def test_no_requests_with_no_minimum_waits_without_nan() -> None:
    criteria = CanaryCriteria(
        min_requests=0, max_error_rate=0.01, max_p99_ms=10, min_accuracy=0.9, min_feedback=0
    )
    verdict = judge_canary(RouteWindow(), RouteWindow(), criteria)
    assert verdict.decision == "wait"
    assert check_named(verdict, "requests").status == "pass"
    assert {c.name: c.status for c in verdict.checks[1:]} == {
        "error rate": "wait",
        "p99 latency": "wait",
        "accuracy": "wait",
    }
    strict_json(verdict.to_dict())


def test_error_rate_within_the_limit_passes() -> None:
    verdict = judge_canary(
        RouteWindow(requests=1000, errors=0),
        RouteWindow(requests=400, errors=4),
        CanaryCriteria(max_error_rate=0.01),
    )
    check = check_named(verdict, "error rate")
    assert (verdict.decision, check.status) == ("pass", "pass")
    assert check.value == pytest.approx(0.01)
    assert check.threshold == 0.01
    assert check.detail == "canary 1.0% errors, within the 1.0% limit"


def test_error_rate_significantly_worse_than_stable_fails() -> None:
    stable, canary = RouteWindow(requests=1000), RouteWindow(requests=200, errors=40)
    verdict = judge_canary(stable, canary, CanaryCriteria(max_error_rate=0.01))
    check = check_named(verdict, "error rate")
    assert (verdict.decision, check.status) == ("fail", "fail")
    z = two_proportion_z_test(40, 200, 0, 1000, "greater").statistic
    assert check.detail == (
        f"canary 20.0% errors vs stable 0.0% (z={z:.1f}, p<0.001), above the 1.0% limit"
    )
    assert verdict.reasons == [check.detail]


def test_error_rate_above_the_limit_but_not_significant_waits() -> None:
    # 3/200 vs 5/1000: one-sided p is about 0.056, just above alpha.
    verdict = judge_canary(
        RouteWindow(requests=1000, errors=5),
        RouteWindow(requests=200, errors=3),
        CanaryCriteria(max_error_rate=0.01),
    )
    check = check_named(verdict, "error rate")
    assert (verdict.decision, check.status) == ("wait", "wait")
    assert "canary 1.5% errors vs stable 0.5%" in check.detail
    assert "p=0.056" in check.detail
    assert "not significantly worse" in check.detail


def test_error_rate_when_stable_fails_as_often_passes() -> None:
    verdict = judge_canary(
        RouteWindow(requests=1000, errors=14),
        RouteWindow(requests=200, errors=3),
        CanaryCriteria(max_error_rate=0.01),
    )
    check = check_named(verdict, "error rate")
    assert (verdict.decision, check.status) == ("pass", "pass")
    assert "stable fails as often" in check.detail
    assert "stable 1.4%" in check.detail


def test_error_rate_both_bad_but_canary_significantly_worse_fails() -> None:
    verdict = judge_canary(
        RouteWindow(requests=1000, errors=50),
        RouteWindow(requests=500, errors=100),
        CanaryCriteria(max_error_rate=0.01),
    )
    assert verdict.decision == "fail"
    assert "vs stable 5.0%" in check_named(verdict, "error rate").detail


@pytest.mark.parametrize("stable", [None, RouteWindow()])
def test_error_rate_without_stable_traffic_uses_the_limit(stable: RouteWindow | None) -> None:
    criteria = CanaryCriteria(max_error_rate=0.01)
    # 20 errors in 200: the one-sided 95% Wilson lower bound is far above 1%.
    failing = judge_canary(stable, RouteWindow(requests=200, errors=20), criteria)
    check = check_named(failing, "error rate")
    low = wilson_interval(20, 200, 0.90)[0]
    assert low > 0.01
    assert (failing.decision, check.status) == ("fail", "fail")
    assert check.detail == (
        f"canary 10.0% errors (at least {low * 100:.1f}% with 95% confidence), above the 1.0% "
        "limit; no stable traffic to compare with"
    )
    # 3 errors in 200: 1.5% but the lower bound is below 1%.
    assert wilson_interval(3, 200, 0.90)[0] < 0.01
    waiting = judge_canary(stable, RouteWindow(requests=200, errors=3), criteria)
    assert check_named(waiting, "error rate").status == "wait"
    assert "no stable traffic" in waiting.reasons[0]
    assert judge_canary(stable, RouteWindow(requests=200, errors=1), criteria).decision == "pass"


def test_p99_latency_checks() -> None:
    criteria = CanaryCriteria(min_requests=100, max_p99_ms=100)
    fast = RouteWindow(requests=200, latency_counts=one_bucket(LATENCY_BUCKETS.index(0.025), 200))
    verdict = judge_canary(None, fast, criteria)
    check = check_named(verdict, "p99 latency")
    assert (verdict.decision, check.status) == ("pass", "pass")
    assert check.value == pytest.approx((0.01 + 0.015 * 0.99) * 1000)
    assert check.detail == "canary p99 24.9 ms, within the 100 ms limit"

    slow = RouteWindow(requests=200, latency_counts=one_bucket(LATENCY_BUCKETS.index(0.5), 200))
    verdict = judge_canary(None, slow, criteria)
    check = check_named(verdict, "p99 latency")
    assert (verdict.decision, check.status) == ("fail", "fail")
    assert check.detail == (
        "canary p99 498 ms, above the 100 ms limit; no stable traffic to compare with"
    )

    # Enough requests, but none answered: nothing to judge latency on.
    silent = RouteWindow(requests=200, errors=200)
    assert check_named(judge_canary(None, silent, criteria), "p99 latency").status == "wait"


def slow(seconds: float, count: int) -> RouteWindow:
    """`count` answered requests that each took `seconds`."""
    return latency_window(np.full(count, seconds))


def test_a_canary_as_slow_as_stable_is_not_failed_on_an_absolute_limit() -> None:
    """Issue 15: the whole machine was slow (canary and stable p99 ~900 ms, limit 200 ms).

    Rolling back cannot make stable faster; like the error rate, latency over the limit fails
    only when the canary is also slower than stable in the same window."""
    criteria = CanaryCriteria(min_requests=100, max_p99_ms=200)
    verdict = judge_canary(slow(0.91, 2000), slow(0.92, 200), criteria)
    check = check_named(verdict, "p99 latency")
    assert (verdict.decision, check.status) == ("pass", "pass")
    assert check.value == pytest.approx(995.0)
    assert check.detail == (
        "canary p99 995 ms vs stable 995 ms in the same window: above the 200 ms limit, but "
        "within 1.5x stable + 10 ms (1502 ms): stable is as slow, so rolling back would not help"
    )
    # A canary much slower than a slow stable still fails.
    verdict = judge_canary(slow(0.3, 2000), slow(0.92, 200), criteria)
    check = check_named(verdict, "p99 latency")
    assert (verdict.decision, check.status) == ("fail", "fail")
    assert check.threshold == pytest.approx(497.5 * 1.5 + 10)
    assert check.detail == (
        "canary p99 995 ms vs stable 498 ms in the same window: above the 200 ms limit and "
        "1.5x stable + 10 ms (756 ms)"
    )


def test_by_default_latency_is_judged_against_stable_in_the_same_window() -> None:
    criteria = CanaryCriteria(min_requests=100)
    assert (criteria.max_p99_ms, criteria.max_p99_ratio, criteria.p99_slack_ms) == (None, 1.5, 10)
    same = judge_canary(slow(0.91, 2000), slow(0.92, 200), criteria)
    check = check_named(same, "p99 latency")
    assert (same.decision, check.status) == ("pass", "pass")
    assert check.detail == (
        "canary p99 995 ms vs stable 995 ms in the same window: within 1.5x stable + 10 ms "
        "(1502 ms)"
    )
    slower = judge_canary(slow(0.04, 2000), slow(0.92, 200), criteria)
    check = check_named(slower, "p99 latency")
    assert (slower.decision, check.status) == ("fail", "fail")
    assert check.detail == (
        "canary p99 995 ms vs stable 49.8 ms in the same window: above 1.5x stable + 10 ms "
        "(84.6 ms)"
    )
    assert slower.reasons == [check.detail]
    # Tiny latencies: 1 ms against 5 ms is five times slower, but within the 10 ms slack.
    tiny = judge_canary(slow(0.0008, 2000), slow(0.004, 200), criteria)
    assert check_named(tiny, "p99 latency").status == "pass"
    # The ratio and the slack are the criteria's.
    strict = CanaryCriteria(max_p99_ratio=1.2, p99_slack_ms=0)
    verdict = judge_canary(slow(0.004, 2000), slow(0.008, 200), strict)
    assert check_named(verdict, "p99 latency").detail == (
        "canary p99 10 ms vs stable 5 ms in the same window: above 1.2x stable (6 ms)"
    )


def test_latency_without_stable_to_compare_with() -> None:
    criteria = CanaryCriteria(min_requests=100)
    # The last step (100%): stable has no traffic; only an absolute limit can fail the canary.
    for stable in (RouteWindow(), slow(0.01, 40)):
        verdict = judge_canary(stable, slow(0.92, 200), criteria)
        check = check_named(verdict, "p99 latency")
        assert (verdict.decision, check.status) == ("pass", "pass")
        assert check.detail == (
            f"canary p99 995 ms; too little stable traffic in this window to compare with "
            f"({stable.observed_latencies} of 100 requests)"
        )
        limited = judge_canary(stable, slow(0.92, 200), CanaryCriteria(max_p99_ms=200))
        assert check_named(limited, "p99 latency").detail == (
            "canary p99 995 ms, above the 200 ms limit; no stable traffic to compare with"
        )
        assert limited.decision == "fail"
    # Blue-green after the switch has no stable at all: without a limit, no latency check.
    assert [c.name for c in judge_canary(None, slow(0.92, 200), criteria).checks] == ["requests"]


def test_latency_at_the_last_step_compares_with_stable_at_the_previous_step() -> None:
    criteria = CanaryCriteria(min_requests=100, max_p99_ms=200)
    before = slow(0.91, 1000)
    verdict = judge_canary(RouteWindow(), slow(0.92, 200), criteria, stable_before=before)
    assert verdict.decision == "pass"
    assert check_named(verdict, "p99 latency").detail == (
        "canary p99 995 ms vs stable 995 ms at the previous step (too little stable traffic in "
        "this one): above the 200 ms limit, but within 1.5x stable + 10 ms (1502 ms): stable is "
        "as slow, so rolling back would not help"
    )
    # Enough stable traffic in this window: the same window wins over the earlier one.
    verdict = judge_canary(slow(0.04, 500), slow(0.92, 200), criteria, stable_before=before)
    assert verdict.decision == "fail"
    assert "vs stable 49.8 ms in the same window" in verdict.reasons[0]
    # An earlier window too small to compare with is no comparison.
    verdict = judge_canary(RouteWindow(), slow(0.92, 200), criteria, stable_before=slow(0.9, 5))
    assert verdict.reasons == [
        "canary p99 995 ms, above the 200 ms limit; no stable traffic to compare with"
    ]


def test_latency_ratio_zero_keeps_the_absolute_limit_alone() -> None:
    criteria = CanaryCriteria(max_p99_ms=200, max_p99_ratio=0)
    verdict = judge_canary(slow(0.91, 2000), slow(0.92, 200), criteria)
    assert verdict.decision == "fail"
    assert verdict.reasons == ["canary p99 995 ms, above the 200 ms limit"]
    off = CanaryCriteria(max_p99_ratio=0)
    assert [c.name for c in judge_canary(slow(0.01, 2000), slow(0.9, 200), off).checks] == [
        "requests"
    ]


def test_criteria_stored_before_the_latency_ratio_still_load() -> None:
    stored = {"min_requests": 50, "max_error_rate": 0.02, "max_p99_ms": 250.0, "alpha": 0.05}
    loaded = CanaryCriteria.from_dict(stored)
    assert loaded == CanaryCriteria(min_requests=50, max_error_rate=0.02, max_p99_ms=250.0)
    assert (loaded.max_p99_ratio, loaded.p99_slack_ms) == (1.5, 10.0)
    custom = CanaryCriteria(max_p99_ratio=2.0, p99_slack_ms=0.0)
    assert CanaryCriteria.from_dict(json.loads(strict_json(custom.to_dict()))) == custom


def test_accuracy_checks() -> None:
    criteria = CanaryCriteria(min_accuracy=0.9, min_feedback=30)

    few = judge_canary(None, RouteWindow(requests=500, labelled=20, correct=20), criteria)
    assert check_named(few, "accuracy").status == "wait"
    assert few.reasons == ["20 of 30 labelled predictions so far"]

    good = judge_canary(None, RouteWindow(requests=500, labelled=100, correct=93), criteria)
    assert good.decision == "pass"
    assert check_named(good, "accuracy").detail == (
        "canary accuracy 0.930 on 100 labelled predictions, meeting the 0.900 minimum"
    )

    # 160/200 = 0.8: the one-sided 95% upper bound (about 0.84) is below 0.9.
    high = wilson_interval(160, 200, 0.90)[1]
    assert high < 0.9
    bad = judge_canary(None, RouteWindow(requests=500, labelled=200, correct=160), criteria)
    assert bad.decision == "fail"
    assert f"at most {high:.3f} with 95% confidence" in bad.reasons[0]

    # 26/30 = 0.867: below the minimum, but 30 labels cannot tell.
    unsure = judge_canary(None, RouteWindow(requests=500, labelled=30, correct=26), criteria)
    assert check_named(unsure, "accuracy").status == "wait"
    assert "not significantly" in unsure.reasons[0]


def test_accuracy_does_not_wait_for_requests() -> None:
    # Feedback is judged on its own minimum: the requests check alone makes this wait.
    criteria = CanaryCriteria(min_requests=1000, min_accuracy=0.9, min_feedback=30)
    verdict = judge_canary(None, RouteWindow(requests=100, labelled=200, correct=100), criteria)
    assert verdict.decision == "fail"
    assert check_named(verdict, "requests").status == "wait"


def test_decision_combines_checks() -> None:
    criteria = CanaryCriteria(max_error_rate=0.01, max_p99_ms=100, min_accuracy=0.9)
    fast = one_bucket(LATENCY_BUCKETS.index(0.025), 300)
    stable = RouteWindow(requests=1000)
    # error rate fails, accuracy waits: fail wins, and only the failure is a reason.
    verdict = judge_canary(
        stable, RouteWindow(requests=300, errors=60, latency_counts=fast), criteria
    )
    assert [c.status for c in verdict.checks] == ["pass", "fail", "pass", "wait"]
    assert verdict.decision == "fail"
    assert len(verdict.reasons) == 1
    # Everything passes but accuracy waits: wait.
    verdict = judge_canary(stable, RouteWindow(requests=300, latency_counts=fast), criteria)
    assert verdict.decision == "wait"
    assert verdict.reasons == ["0 of 30 labelled predictions so far"]
    # Everything passes.
    verdict = judge_canary(
        stable, RouteWindow(requests=300, latency_counts=fast, labelled=50, correct=48), criteria
    )
    assert verdict.decision == "pass"
    assert verdict.reasons == []


def test_verdict_and_criteria_json_round_trip() -> None:
    criteria = CanaryCriteria(min_requests=50, max_error_rate=0.02, max_p99_ms=250.0, alpha=0.01)
    assert CanaryCriteria.from_dict(json.loads(strict_json(criteria.to_dict()))) == criteria
    assert CanaryCriteria.from_dict({}) == CanaryCriteria()
    verdict = judge_canary(
        RouteWindow(requests=1000), RouteWindow(requests=200, errors=40), criteria
    )
    data = json.loads(strict_json(verdict.to_dict()))
    assert data["decision"] == "fail"
    assert data["reasons"] == verdict.reasons
    assert Verdict.from_dict(data) == verdict


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 0.5},
        {"min_requests": -1},
        {"max_error_rate": 1.5},
        {"min_accuracy": -0.1},
        {"max_p99_ms": 0.0},
        {"max_p99_ratio": 0.9},
        {"max_p99_ratio": -1.0},
        {"p99_slack_ms": -1.0},
        {"p99_slack_ms": math.inf},
    ],
)
def test_canary_criteria_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CanaryCriteria(**kwargs)


def test_judging_a_canary_does_not_import_scipy() -> None:
    # The controller judges often; the normal distribution comes from the standard library.
    code = (
        "import sys\n"
        "from berth.rollouts.canary_analysis import CanaryCriteria, judge_canary\n"
        "from berth.serving.route_window import RouteWindow\n"
        "criteria = CanaryCriteria(max_error_rate=0.01, min_accuracy=0.9)\n"
        "judge_canary(RouteWindow(requests=500, errors=1), "
        "RouteWindow(requests=200, errors=9, labelled=40, correct=30), criteria)\n"
        "assert not any(m.startswith('scipy') for m in sys.modules), 'scipy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# experiment_report
# --------------------------------------------------------------------------------------------


def accuracy_variant(name: str, correct: int, labelled: int) -> VariantSample:
    window = RouteWindow(requests=labelled + 10, errors=1, labelled=labelled, correct=correct)
    return VariantSample(name, f"churn:{ord(name[0]) - 96}", window)


def test_accuracy_report_recommends_the_significantly_better_variant() -> None:
    report = experiment_report(
        [accuracy_variant("a", 840, 1000), accuracy_variant("b", 910, 1000)], "accuracy"
    )
    _, expected_p, _, _ = stats.chi2_contingency([[910, 90], [840, 160]], correction=False)
    (comparison,) = report.comparisons
    assert (comparison.variant, comparison.control) == ("b", "a")
    assert comparison.difference == pytest.approx(0.07)
    assert comparison.test.p_value == pytest.approx(expected_p, rel=1e-7)
    assert comparison.significant
    assert report.recommendation == "b"
    assert report.explanation == "b is better than a: accuracy 0.91 vs 0.84, p<0.001"

    a, _ = report.variants
    assert (a.name, a.reference, a.requests, a.errors, a.samples) == ("a", "churn:1", 1010, 1, 1000)
    assert a.estimate == pytest.approx(0.84)
    assert (a.ci_low, a.ci_high) == pytest.approx(wilson_interval(840, 1000, 0.95))
    assert a.error_rate == pytest.approx(1 / 1010)
    assert (a.mean_latency_ms, a.p99_ms) == (None, None)


def test_report_not_significant() -> None:
    report = experiment_report(
        [accuracy_variant("a", 84, 100), accuracy_variant("b", 86, 100)], "accuracy"
    )
    p = report.comparisons[0].test.p_value
    assert report.recommendation is None
    assert report.explanation == f"not significant at alpha 0.05 (p={p:.2g})"


def test_report_too_few_samples() -> None:
    # b is far better, but a has not been observed enough to conclude.
    report = experiment_report(
        [accuracy_variant("a", 10, 40), accuracy_variant("b", 95, 100)], "accuracy"
    )
    assert report.comparisons[0].significant
    assert report.recommendation is None
    assert report.explanation == "too few samples: a has 40 of 100"
    lacking = experiment_report(
        [accuracy_variant("a", 10, 40), accuracy_variant("b", 5, 10)], "accuracy"
    )
    assert lacking.explanation == "too few samples: a has 40 of 100, b has 10 of 100"


def test_three_variants_use_bonferroni() -> None:
    # 45/100 vs 30/100: two-sided p = 0.028, below 0.05 but above 0.05 / 2.
    a, b, c = (
        accuracy_variant("a", 30, 100),
        accuracy_variant("b", 45, 100),
        accuracy_variant("c", 30, 100),
    )
    alone = experiment_report([a, b], "accuracy")
    assert alone.recommendation == "b"
    assert alone.comparisons[0].test.p_value == pytest.approx(0.0284597, abs=1e-7)

    report = experiment_report([a, b, c], "accuracy")
    assert report.comparison_alpha == pytest.approx(0.025)
    assert [comparison.significant for comparison in report.comparisons] == [False, False]
    assert report.recommendation is None
    assert report.explanation == (
        "not significant at the Bonferroni-adjusted alpha 0.025 (0.05 over 2 comparisons) "
        "(smallest p=0.028)"
    )
    assert report.to_dict()["comparison_alpha"] == pytest.approx(0.025)


def test_three_variants_recommend_the_best_significant_one() -> None:
    report = experiment_report(
        [
            accuracy_variant("a", 300, 1000),
            accuracy_variant("b", 400, 1000),
            accuracy_variant("c", 450, 1000),
        ],
        "accuracy",
    )
    assert all(comparison.significant for comparison in report.comparisons)
    assert report.recommendation == "c"
    assert report.explanation.startswith("c is better than a: accuracy 0.45 vs 0.3, p<0.001")
    assert "Bonferroni-adjusted alpha 0.025" in report.explanation


def test_control_significantly_better_than_every_variant_is_recommended() -> None:
    two = experiment_report(
        [accuracy_variant("a", 900, 1000), accuracy_variant("b", 800, 1000)], "accuracy"
    )
    assert two.recommendation == "a"
    assert two.explanation == "a is better than b: accuracy 0.9 vs 0.8, p<0.001"

    three = experiment_report(
        [
            accuracy_variant("a", 900, 1000),
            accuracy_variant("b", 800, 1000),
            accuracy_variant("c", 780, 1000),
        ],
        "accuracy",
    )
    assert three.recommendation == "a"
    assert three.explanation.startswith("a is better than every other variant")

    # Better than one variant but not the other: no conclusion.
    mixed = experiment_report(
        [
            accuracy_variant("a", 900, 1000),
            accuracy_variant("b", 800, 1000),
            accuracy_variant("c", 890, 1000),
        ],
        "accuracy",
    )
    p_c = mixed.comparisons[1].test.p_value
    assert mixed.recommendation is None
    assert mixed.explanation == (
        "no variant is significantly better than a, and a is significantly better than b but "
        f"not than c (p={p_c:.2g}) at the Bonferroni-adjusted alpha 0.025 (0.05 over 2 "
        "comparisons)"
    )


def test_outcome_report_matches_scipy() -> None:
    rng = np.random.default_rng(21)
    control = rng.normal(12.0, 4.0, size=300)
    variant = rng.normal(13.5, 6.0, size=250)
    report = experiment_report(
        [
            VariantSample("a", "price:1", outcome_window(control)),
            VariantSample("b", "price:2", outcome_window(variant)),
        ],
        "outcome",
        alpha=0.01,
    )
    expected = stats.ttest_ind(variant, control, equal_var=False)
    (comparison,) = report.comparisons
    assert comparison.test.name == "Welch t-test"
    assert comparison.test.statistic == pytest.approx(expected.statistic, rel=1e-7)
    assert comparison.test.p_value == pytest.approx(expected.pvalue, rel=1e-6)
    assert comparison.difference == pytest.approx(variant.mean() - control.mean())

    a, _ = report.variants
    assert a.samples == 300
    assert a.estimate == pytest.approx(control.mean())
    expected_ci = stats.t.interval(
        0.99, 299, loc=control.mean(), scale=control.std(ddof=1) / math.sqrt(300)
    )
    assert (a.ci_low, a.ci_high) == pytest.approx(expected_ci, rel=1e-7)
    assert report.recommendation == "b"
    assert report.explanation.startswith(
        f"b is better than a: mean outcome {variant.mean():.3g} vs {control.mean():.3g}"
    )


def test_report_with_latency_columns() -> None:
    seconds = np.random.default_rng(2).uniform(0.002, 0.004, size=150)
    window = latency_window(seconds, errors=0)
    report = experiment_report(
        [VariantSample("a", "m:1", window), VariantSample("b", "m:2", window)], "accuracy"
    )
    row = report.variants[0]
    assert row.mean_latency_ms == pytest.approx(seconds.mean() * 1000)
    estimate = window.latency_quantile(0.99)
    assert estimate is not None
    assert row.p99_ms == pytest.approx(estimate * 1000)


@pytest.mark.parametrize("metric", ["accuracy", "outcome"])
def test_report_on_empty_windows_has_no_nan(metric: experiment_analysis.Metric) -> None:
    samples = [VariantSample("a", "m:1", RouteWindow()), VariantSample("b", "m:2", RouteWindow())]
    report = experiment_report(samples, metric, min_samples=0)
    assert report.recommendation is None
    assert report.comparisons[0].test.p_value == 1.0
    assert report.comparisons[0].difference == 0.0
    row = report.variants[0]
    assert (row.estimate, row.ci_low, row.ci_high, row.error_rate) == (None, None, None, None)
    data = json.loads(strict_json(report.to_dict()))
    assert data["variants"][0]["samples"] == 0


def test_report_with_single_outcomes_has_no_interval() -> None:
    one = RouteWindow(outcome_count=1, outcome_sum=3.0, outcome_sum_squares=9.0)
    report = experiment_report(
        [VariantSample("a", "m:1", one), VariantSample("b", "m:2", one)], "outcome", min_samples=1
    )
    row = report.variants[0]
    assert (row.estimate, row.ci_low, row.ci_high) == (3.0, None, None)
    assert report.recommendation is None
    assert isinstance(report, ExperimentReport)
    strict_json(report.to_dict())


def test_report_rejects_bad_arguments() -> None:
    a, b = accuracy_variant("a", 1, 2), accuracy_variant("b", 1, 2)
    with pytest.raises(ValueError):
        experiment_report([a], "accuracy")
    with pytest.raises(ValueError):
        experiment_report([a, a], "accuracy")
    with pytest.raises(ValueError):
        experiment_report([a, b], "latency")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        experiment_report([a, b], "accuracy", alpha=1.0)
