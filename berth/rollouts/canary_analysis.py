"""Whether a canary may be promoted (pass), must be rolled back (fail) or needs more traffic (wait).

`judge_canary` compares the canary's window with stable's in the same window. Latencies are
milliseconds in checks (the unit people set limits in). Every result is finite or None, never
NaN, so that it can be stored as JSON and shown as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from berth.rollouts.report_text import confidence, ms, optional_float, p_text, percent
from berth.rollouts.statistics import (
    two_proportion_z_test,
    wilson_interval,
)
from berth.serving.route_window import RouteWindow

Status = Literal["pass", "fail", "wait"]


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
            max_error_rate=optional_float(d.get("max_error_rate")),
            max_p99_ms=optional_float(d.get("max_p99_ms")),
            max_p99_ratio=float(d.get("max_p99_ratio", default.max_p99_ratio)),
            p99_slack_ms=float(d.get("p99_slack_ms", default.p99_slack_ms)),
            min_accuracy=optional_float(d.get("min_accuracy")),
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
            value=optional_float(d.get("value")),
            threshold=optional_float(d.get("threshold")),
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
        return check("pass", f"canary {percent(rate)} errors, within the {percent(limit)} limit")

    if stable is None or stable.requests == 0:
        low, _ = wilson_interval(canary.errors, canary.requests, 1 - 2 * criteria.alpha)
        bound = f"at least {percent(low)} with {confidence(criteria.alpha)} confidence"
        if low > limit:
            return check(
                "fail",
                f"canary {percent(rate)} errors ({bound}), above the {percent(limit)} limit; "
                "no stable traffic to compare with",
            )
        return check(
            "wait",
            f"canary {percent(rate)} errors, above the {percent(limit)} limit but not "
            f"significantly ({bound}); no stable traffic to compare with",
        )

    stable_rate = stable.errors / stable.requests
    test = two_proportion_z_test(
        canary.errors, canary.requests, stable.errors, stable.requests, "greater"
    )
    versus = (
        f"canary {percent(rate)} errors vs stable {percent(stable_rate)} "
        f"(z={test.statistic:.1f}, {p_text(test.p_value)})"
    )
    if test.p_value < criteria.alpha:
        return check("fail", f"{versus}, above the {percent(limit)} limit")
    if stable_rate > limit:
        return check(
            "pass",
            f"{versus}: above the {percent(limit)} limit, but stable fails as often",
        )
    return check(
        "wait",
        f"{versus}: above the {percent(limit)} limit but not significantly worse than stable "
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
    canary_p99 = f"canary p99 {ms(p99_ms)}"
    if limit_ms is not None and p99_ms <= limit_ms:
        return check("pass", f"{canary_p99}, within the {ms(limit_ms)} limit")

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
        above = f"{canary_p99}, above the {ms(limit_ms)} limit"
        return check("fail", above if ratio == 0 else f"{above}; no stable traffic to compare with")

    bound = stable_ms * ratio + criteria.p99_slack_ms
    slack = f" + {criteria.p99_slack_ms:g} ms" if criteria.p99_slack_ms else ""
    rule = f"{ratio:g}x stable{slack} ({ms(bound)})"
    versus = f"{canary_p99} vs stable {ms(stable_ms)} {when}"
    if limit_ms is None:
        if p99_ms > bound:
            return check("fail", f"{versus}: above {rule}", bound)
        return check("pass", f"{versus}: within {rule}", bound)
    if p99_ms > bound:
        return check("fail", f"{versus}: above the {ms(limit_ms)} limit and {rule}", bound)
    return check(
        "pass",
        f"{versus}: above the {ms(limit_ms)} limit, but within {rule}: stable is as slow, "
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
    bound = f"at most {high:.3f} with {confidence(criteria.alpha)} confidence"
    if high < minimum:
        return check("fail", f"{observed} ({bound}), below the {minimum:.3f} minimum")
    return check(
        "wait", f"{observed}, below the {minimum:.3f} minimum but not significantly ({bound})"
    )
