"""Latency histogram bounds: the served metrics and the rollout analysis read the same buckets.

Kept free of imports: the analysis (and the `berth rollout` defaults it holds) must not need
prometheus_client, numpy or pandas, which the metrics module imports.
"""

from __future__ import annotations

# 0.1 ms .. 10 s: fast tabular models answer in well under a millisecond.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
