"""Live evidence about an endpoint's routes: traffic totals and outcomes from feedback.

Traffic (requests, errors, latency) comes from a `MetricsSource`:

- `ServerMetrics` (the default): the totals every Berth process writes to the registry database
  (`berth.serving.route_stats`), summed over workers and replicas.
- `PrometheusMetrics` (`--metrics-source http://host:9090`): a Prometheus server scraping every
  replica, queried for `berth_route_requests_total` and `berth_prediction_duration_seconds`.

Both give running totals; a rollout stores them when a step starts and judges the difference.
Outcomes (accuracy, numeric outcomes) always come from the prediction log joined with feedback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select

from berth.errors import InvalidInput, NotReady
from berth.monitoring.performance import label_key
from berth.observability.metrics import LATENCY_BUCKETS
from berth.serving.route_stats import read_totals
from berth.serving.route_window import RouteWindow
from berth.store.db import Database
from berth.store.tables import FeedbackRow, PredictionRow

Totals = dict[tuple[str, int], RouteWindow]
"""Running totals by (model, version)."""

SERVER = "server"
MAX_FEEDBACK_ROWS = 200_000


class MetricsSource(Protocol):
    name: str

    def totals(self, endpoint: str) -> Totals: ...


class ServerMetrics:
    name = SERVER

    def __init__(self, db: Database) -> None:
        self.db = db

    def totals(self, endpoint: str) -> Totals:
        return read_totals(self.db, endpoint)


class PrometheusMetrics:
    """Totals over every replica Prometheus scrapes (a restarted replica's counters start at 0
    again; a window's difference is clamped at 0 rather than going negative)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.name = self.url
        self.timeout = timeout

    def totals(self, endpoint: str) -> Totals:
        selector = f'endpoint="{_escape(endpoint)}"'
        requests = self._query(
            f"sum by (model, version, outcome) (berth_route_requests_total{{{selector}}})"
        )
        buckets = self._query(
            f"sum by (model, version, le) (berth_prediction_duration_seconds_bucket{{{selector}}})"
        )
        sums = self._query(
            f"sum by (model, version) (berth_prediction_duration_seconds_sum{{{selector}}})"
        )
        found: dict[tuple[str, int], dict[str, Any]] = {}

        def entry(labels: Mapping[str, str]) -> dict[str, Any]:
            key = (labels.get("model", ""), int(labels.get("version", "0") or 0))
            return found.setdefault(key, {"requests": 0, "errors": 0, "le": {}, "sum": 0.0})

        for labels, value in requests:
            item = entry(labels)
            item["requests"] += int(value)
            if labels.get("outcome") == "error":
                item["errors"] += int(value)
        for labels, value in buckets:
            entry(labels)["le"][labels.get("le", "+Inf")] = value
        for labels, value in sums:
            entry(labels)["sum"] = value
        return {
            key: RouteWindow(
                requests=item["requests"],
                errors=item["errors"],
                latency_counts=_bucket_counts(item["le"]),
                latency_sum=item["sum"],
            )
            for key, item in found.items()
            if item["requests"]
        }

    def _query(self, query: str) -> list[tuple[dict[str, str], float]]:
        import httpx  # only controllers reading Prometheus need an HTTP client

        try:
            response = httpx.get(
                f"{self.url}/api/v1/query", params={"query": query}, timeout=self.timeout
            )
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise NotReady(
                f"cannot query Prometheus at {self.url}: {exc}; check --metrics-source and that "
                "Prometheus is running"
            ) from exc
        if document.get("status") != "success":
            raise NotReady(f"Prometheus at {self.url} refused the query: {document.get('error')}")
        results = document.get("data", {}).get("result", [])
        return [(r.get("metric", {}), float(r["value"][1])) for r in results]


def metrics_source(db: Database, spec: str | None) -> MetricsSource:
    """`server` (or nothing) for the servers' own totals; an http(s) URL for Prometheus."""
    spec = check_metrics_source(spec)
    return ServerMetrics(db) if spec == SERVER else PrometheusMetrics(spec)


def check_metrics_source(spec: str | None) -> str:
    if not spec or spec == SERVER:
        return SERVER
    if spec.startswith(("http://", "https://")):
        return spec
    raise InvalidInput(
        f"metrics source '{spec}' is not valid; use 'server' (the default) or the URL of a "
        "Prometheus server, e.g. http://127.0.0.1:9090"
    )


def _bucket_counts(cumulative: Mapping[str, float]) -> tuple[int, ...]:
    """Prometheus' cumulative `le` buckets as Berth's per-bucket counts."""
    if not cumulative:
        return ()
    bounds = [*LATENCY_BUCKETS, math.inf]
    counts: list[int] = []
    previous = 0.0
    for bound in bounds:
        label = "+Inf" if bound == math.inf else _le(bound)
        value = cumulative.get(label, previous)
        counts.append(max(0, round(value - previous)))
        previous = max(previous, value)
    return tuple(counts)


def _le(bound: float) -> str:
    # prometheus_client renders bucket bounds with repr(float): 0.0001 -> "0.0001", 1.0 -> "1.0"
    return repr(float(bound))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def with_outcomes(
    db: Database,
    window: RouteWindow,
    endpoint: str,
    model: str,
    version: int,
    since: datetime,
    until: datetime | None = None,
) -> RouteWindow:
    """`window` plus the feedback on this route's predictions made since `since`: how many were
    labelled and correct, and the sum (and squares) of numeric outcomes."""
    labelled = correct = outcomes = 0
    total = squares = 0.0
    with db.session() as session:
        rows = session.execute(
            select(PredictionRow.prediction, FeedbackRow.actual)
            .join(FeedbackRow, FeedbackRow.prediction_id == PredictionRow.id)
            .where(
                PredictionRow.endpoint == endpoint,
                PredictionRow.model == model,
                PredictionRow.version == version,
                PredictionRow.created_at >= since,
                *([PredictionRow.created_at <= until] if until is not None else []),
            )
            .limit(MAX_FEEDBACK_ROWS)
        ).all()
    for prediction, actual in rows:
        labelled += 1
        if label_key(prediction) == label_key(actual):
            correct += 1
        if isinstance(actual, int | float) and not isinstance(actual, bool):
            value = float(actual)
            if math.isfinite(value):
                outcomes += 1
                total += value
                squares += value * value
    return replace(
        window,
        labelled=labelled,
        correct=correct,
        outcome_count=outcomes,
        outcome_sum=total,
        outcome_sum_squares=squares,
    )
