"""What one route (a version behind an endpoint) did over a window of time.

A `RouteWindow` is the difference of two snapshots of running totals (`later.minus(earlier)`):
route statistics produce them, canary analysis and experiment reports judge them. Rates are
fractions in [0, 1] and latencies seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from berth.observability.buckets import LATENCY_BUCKETS

_BUCKET_COUNT = len(LATENCY_BUCKETS) + 1


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
