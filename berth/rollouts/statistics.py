"""Intervals and hypothesis tests for canary analysis and experiments: pure functions, no I/O.

Normal-distribution quantities come from the standard library, so judging a canary never imports
scipy; the t distribution (mean intervals, Welch's test) needs `scipy.special`, imported on first
use.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

Alternative = Literal["two-sided", "greater", "less"]

_ALTERNATIVES = ("two-sided", "greater", "less")


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
