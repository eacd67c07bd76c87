"""Prometheus metrics of the dataplane. Names follow Prometheus conventions (unit suffixes)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# `*_created` series double the exposition size and no alert or dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

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

PREDICTIONS = Counter(
    "berth_predictions",
    "Prediction requests handled, by model, version, endpoint and outcome.",
    ["model", "version", "endpoint", "status"],
)
PREDICTION_DURATION = Histogram(
    "berth_prediction_duration_seconds",
    "Time from validated input to model output, per request.",
    ["model", "version", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
PREDICTION_ERRORS = Counter(
    "berth_prediction_errors",
    "Failed predictions, by kind (invalid_input, internal).",
    ["model", "version", "kind"],
)
MODEL_LOADED = Gauge(
    "berth_model_loaded", "1 while a version is loaded in this process.", ["model", "version"]
)
MODEL_LOAD_SECONDS = Histogram(
    "berth_model_load_seconds",
    "Time to fetch, verify, load and warm a version.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
