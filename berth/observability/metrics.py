"""Prometheus metrics of the server. Names follow Prometheus conventions (unit suffixes).

One process: metrics live in the default registry. Several worker processes (`berth serve
--workers N`): the serve command points `PROMETHEUS_MULTIPROC_DIR` at a fresh private directory
before the workers start, every worker writes its values there, and `/metrics` (whichever worker
answers) merges all the files, so counters and histograms are totals over the workers. Gauges say
how to merge in `multiprocess_mode`:

- `berth_requests_in_flight`: `livesum`, the requests in flight in the whole server; a dead
  worker's requests are gone, so its value must not count.
- `berth_model_loaded`: `livemax`, 1 while at least one live worker has the version loaded; keeps
  the `{model, version}` label set and 0/1 values (`liveall` would add a `pid` label and one series
  per worker; `max` would keep a version "loaded" forever after the worker holding it died).
- `berth_model_accuracy`, `berth_feature_drift`: `mostrecent`, the value last computed by any
  worker (they are computed from shared state, so the newest one is the truth, also after its
  worker exited).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
from contextvars import ContextVar
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

from berth.observability.buckets import LATENCY_BUCKETS as LATENCY_BUCKETS

# `*_created` series double the exposition size and no alert or dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared directory when this process writes its metrics there, else None.

    prometheus_client decides at import, from the environment, whether values live in memory or
    in files; ask it rather than the environment, which may have changed since.
    """
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROCESS_ENV)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10_000)
# No negative bounds: with one, prometheus_client stops exposing `_sum`, and mean confidence (sum /
# count) is the first thing to watch. Negative values land in the `le="0.0"` bucket.
# Fine steps over [0, 1] for class confidences, a coarse log scale for regression outputs.
PREDICTION_VALUE_BUCKETS = (
    0.0,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    1.0,
    10.0,
    100.0,
    1000.0,
    10_000.0,
)
# Features come in any unit; one bucket set must fit all, so a coarse 1-2.5-5 scale.
FEATURE_VALUE_BUCKETS = (
    0.0,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    10_000.0,
    100_000.0,
)

PROTOCOL: ContextVar[str] = ContextVar("berth_protocol", default="rest")
"""The transport of the request being handled (`rest` or `grpc`): the `protocol` label. The
gRPC service sets it for its calls; everything else predicts over REST or in process."""

PREDICTIONS = Counter(
    "berth_predictions",
    "Prediction requests handled, by model, version, endpoint, outcome and protocol.",
    ["model", "version", "endpoint", "status", "protocol"],
)
PREDICTION_DURATION = Histogram(
    "berth_prediction_duration_seconds",
    "Time from validated input to model output, per request.",
    ["model", "version", "endpoint", "protocol"],
    buckets=LATENCY_BUCKETS,
)
PREDICTION_ERRORS = Counter(
    "berth_prediction_errors",
    "Failed predictions, by kind (invalid_input, rejected, internal).",
    ["model", "version", "kind"],
)
ROUTE_REQUESTS = Counter(
    "berth_route_requests",
    "Requests through an endpoint, by the route's version and outcome (ok, or error: failed "
    "on the server side; a client's invalid input is not counted). What canary analysis reads "
    "from Prometheus.",
    ["endpoint", "model", "version", "outcome"],
)
SHADOW_REQUESTS = Counter(
    "berth_shadow_requests",
    "Requests mirrored to an endpoint's shadow version, by outcome (ok, error).",
    ["endpoint", "model", "version", "outcome"],
)
SHADOW_ROWS = Counter(
    "berth_shadow_rows",
    "Mirrored rows on which the shadow version agreed or disagreed with the answer served.",
    ["endpoint", "model", "version", "result"],
)
SHADOW_SKIPPED = Counter(
    "berth_shadow_skipped",
    "Requests not mirrored because too many shadow predictions were already running.",
    ["endpoint"],
)
BATCH_SIZE = Histogram(
    "berth_batch_size",
    "Rows per model call.",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
BATCH_QUEUE_WAIT = Histogram(
    "berth_batch_queue_wait_seconds",
    "Time a request waited in the adaptive batcher before its batch ran.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "berth_cache_lookups",
    "Prediction cache lookups, by model and result (hit, miss).",
    ["model", "result"],
)
CACHE_EVICTIONS = Counter(
    "berth_cache_evictions",
    "Entries dropped from the in-process prediction cache to stay within its memory bound.",
)
CACHE_ERRORS = Counter(
    "berth_cache_errors",
    "Cache backend failures (answered as a miss; the prediction still runs), by backend.",
    ["backend"],
)
MODEL_LOADED = Gauge(
    "berth_model_loaded",
    "1 while a version is loaded (in at least one live worker).",
    ["model", "version"],
    multiprocess_mode="livemax",
)
MODEL_LOAD_SECONDS = Histogram(
    "berth_model_load_seconds",
    "Time to fetch, verify, load and warm a version.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
PREDICTION_VALUE = Histogram(
    "berth_prediction_value",
    "Sampled model outputs: top-class confidence for classifiers, the value for regressors.",
    ["model", "version"],
    buckets=PREDICTION_VALUE_BUCKETS,
)
FEATURE_VALUE = Histogram(
    "berth_feature_value",
    "Sampled numeric input features of the models named in BERTH_FEATURE_METRICS.",
    ["model", "feature"],
    buckets=FEATURE_VALUE_BUCKETS,
)
MODEL_ACCURACY = Gauge(
    "berth_model_accuracy",
    "Live quality of a version from feedback, by metric (accuracy, f1, mae, ...).",
    ["model", "version", "metric"],
    multiprocess_mode="mostrecent",
)
FEATURE_DRIFT = Gauge(
    "berth_feature_drift",
    "Drift score of an input feature against the version's reference statistics.",
    ["model", "version", "feature"],
    multiprocess_mode="mostrecent",
)

# `berth_requests_in_flight` is updated by the load-shedding middleware. It is registered at the
# first scrape, and only if that middleware has not registered its own (older) gauge of that name.
REQUESTS_IN_FLIGHT = Gauge(
    "berth_requests_in_flight",
    "Prediction requests being handled (by all workers).",
    multiprocess_mode="livesum",
    registry=None,
)
_LATE: list[Any] = [REQUESTS_IN_FLIGHT]

PREDICTION_VALUES_PER_REQUEST = 32
"""Most output values one request adds to `berth_prediction_value` (the cost stays bounded)."""
FEATURE_ROWS_PER_REQUEST = 8
"""Most rows of a sampled request whose features are recorded."""
MAX_FEATURES_PER_MODEL = 50
"""Most features per model in `berth_feature_value` (label cardinality)."""


# exposition ---------------------------------------------------------------------------------


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of this process, or of all workers; and its media type."""
    path = multiprocess_dir()
    if path is None:
        _register_late()
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    forget_dead_workers(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _register_late() -> None:
    while _LATE:
        collector = _LATE.pop()
        with contextlib.suppress(ValueError):  # the name is taken: that collector is exposed
            REGISTRY.register(collector)


_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def forget_dead_workers(path: str) -> None:
    """Drop the live-gauge files of worker processes that died without exiting cleanly.

    A worker removes its own at exit; a killed one cannot, and uvicorn replaces it with a new
    process, so without this its last in-flight count and loaded versions would stay forever.
    """
    for name in os.listdir(path):
        match = _LIVE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_self(path: str) -> None:
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


if (_dir := multiprocess_dir()) is not None and os.path.isdir(_dir):
    atexit.register(_forget_self, _dir)
