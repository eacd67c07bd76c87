"""Prometheus metrics: names, labels, buckets, prediction and feature values, several workers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from berth.api.middleware.access_log import AccessLogMiddleware
from berth.api.middleware.compression import CompressionMiddleware
from berth.config import Settings
from berth.monitoring.log_fields import bind_prediction
from berth.monitoring.prediction_metrics import PredictionMetrics, feature_values, prediction_values
from berth.observability import metrics
from berth.registry.service import Registry
from tests.conftest import BERTH, berth, free_port, register_churn, register_iris, wait_ready

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
CHURN_ROW = {"tenure_months": 5, "monthly_charges": 80.5, "plan": "basic", "support_calls": 3}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over series of `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def instrument(app: Any, settings: Settings) -> None:
    """What `create_app` installs (the access-log middleware and the observers), if it does not yet."""
    stack = app.user_middleware  # outermost first
    if not any(m.cls is AccessLogMiddleware for m in stack):
        # Inside request id (and tracing), just outside compression and the body reader.
        at = next(i for i, m in enumerate(stack) if m.cls is CompressionMiddleware)
        stack.insert(
            at,
            Middleware(
                AccessLogMiddleware,
                enabled=settings.access_log,
                sample=settings.access_log_sample,
            ),
        )
    observers = app.state.services.dataplane.observers
    if not any(isinstance(o, PredictionMetrics) for o in observers):
        observers.append(
            PredictionMetrics(settings.feature_metrics, settings.feature_metrics_every)
        )
        observers.append(bind_prediction)


AppFactory = Callable[..., TestClient]


def client_factory(
    settings: Settings, iris_files: tuple[Path, Path], churn_files: tuple[Path, Path, Path]
) -> Iterator[AppFactory]:
    """Start instrumented in-process apps (dev mode, iris and churn) with settings changed by keywords."""
    from berth.api.app import build_services, create_app

    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    register_churn(registry, churn_files)
    clients: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        changed = settings.model_copy(update={"dev": True, "open_route_rate": None, **changes})
        app = create_app(changed, build_services(changed, registry))
        instrument(app, changed)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    registry.db.dispose()


@pytest.fixture
def make_client(
    settings: Settings, iris_files: tuple[Path, Path], churn_files: tuple[Path, Path, Path]
) -> Iterator[AppFactory]:
    yield from client_factory(settings, iris_files, churn_files)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_prediction_metrics_names_labels_and_buckets(make_client: AppFactory) -> None:
    client = make_client()
    before = scrape(client)
    for _ in range(3):
        ok = client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
        assert ok.status_code == 200
    rows = client.post("/api/v1/models/iris/batch-predict", json={"instances": [IRIS_ROW] * 5})
    assert rows.status_code == 200
    assert client.post("/api/v1/models/iris/predict", json={"features": [1]}).status_code == 400
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    iris = {"model": "iris", "version": "1"}
    assert delta("berth_predictions_total", **iris, status="ok") == 4
    assert delta("berth_predictions_total", **iris, status="error") == 1
    assert delta("berth_prediction_errors_total", **iris, kind="invalid_input") == 1
    assert delta("berth_prediction_duration_seconds_count", **iris) == 4
    buckets = {
        dict(labels)["le"]
        for name, labels in after
        if name == "berth_prediction_duration_seconds_bucket" and ("model", "iris") in labels
    }
    assert {"0.0001", "10.0", "+Inf"} <= buckets
    assert len(buckets) == len(metrics.LATENCY_BUCKETS) + 1
    # Batch size: one observation per request, of its row count.
    assert delta("berth_batch_size_count", **iris) == 4
    assert delta("berth_batch_size_sum", **iris) == 3 + 5
    assert delta("berth_batch_size_bucket", **iris, le="1.0") == 3
    assert value(after, "berth_model_loaded", **iris) == 1
    assert value(after, "berth_model_load_seconds_count") >= 2
    assert ("berth_requests_in_flight", frozenset()) in after
    # No `_created` series.
    assert not any(name.endswith("_created") for name, _ in after)


def test_prediction_value_records_top_class_confidence(make_client: AppFactory) -> None:
    client = make_client()
    before = scrape(client)
    response = client.post("/api/v1/models/iris/batch-predict", json={"instances": [IRIS_ROW] * 3})
    assert response.status_code == 200
    after = scrape(client)
    iris = {"model": "iris", "version": "1"}
    count = value(after, "berth_prediction_value_count", **iris) - value(
        before, "berth_prediction_value_count", **iris
    )
    total = value(after, "berth_prediction_value_sum", **iris) - value(
        before, "berth_prediction_value_sum", **iris
    )
    assert count == 3
    # Confidences of a 3-class model: above 1/3 and at most 1 each.
    assert 1.0 < total <= 3.0
    confident = value(after, "berth_prediction_value_bucket", **iris, le="0.9") - value(
        before, "berth_prediction_value_bucket", **iris, le="0.9"
    )
    assert confident == 0  # this iris row is a clear setosa: confidence above 0.9


def test_prediction_values_are_sampled_numeric_and_finite() -> None:
    probabilities = np.array([[0.1, 0.9], [0.7, 0.3]])
    assert prediction_values(np.array(["a", "b"]), probabilities, 10) == [0.9, 0.7]
    assert prediction_values(np.array([1.5, np.nan, np.inf, -2.0]), None, 10) == [1.5, -2.0]
    assert prediction_values(np.array(["yes", "no"], dtype=object), None, 10) == []
    assert len(prediction_values(np.arange(1000.0), None, 32)) == 32
    spread = prediction_values(np.arange(1000.0), None, 4)
    assert spread == [0.0, 333.0, 666.0, 999.0]
    assert len(prediction_values(np.ones((100, 3)), None, 32)) == 32
    assert len(prediction_values(np.ones((100, 5)), np.full((100, 5), 0.2), 32)) == 32


def test_feature_values_take_numeric_columns_or_the_first_tensor() -> None:
    frame = pd.DataFrame(
        {"age": [30, 40], "plan": ["a", "b"], "flag": [True, False], "spend": [1.5, None]}
    )
    assert feature_values(frame, 8, 50) == [("age", 30.0), ("age", 40.0), ("spend", 1.5)]
    assert feature_values(np.arange(6.0).reshape(3, 2), 2, 50) == [
        ("input[0]", 0.0),
        ("input[0]", 4.0),
        ("input[1]", 1.0),
        ("input[1]", 5.0),
    ]
    wide = np.zeros((1, 80))
    assert len({name for name, _ in feature_values(wide, 8, 50)}) == 50
    assert feature_values({"pixels": np.zeros((2, 3, 3))}, 8, 50) == []
    assert [n for n, _ in feature_values({"x": np.ones((1, 2)), "y": np.ones((1, 1))}, 8, 50)] == [
        "x[0]",
        "x[1]",
    ]


def test_feature_metrics_are_opt_in_per_model(make_client: AppFactory) -> None:
    client = make_client(feature_metrics=["churn"], feature_metrics_every=1)
    before = scrape(client)
    assert (
        client.post("/api/v1/models/churn/predict", json={"features": CHURN_ROW}).status_code == 200
    )
    assert (
        client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW}).status_code == 200
    )
    after = scrape(client)

    def delta(**labels: str) -> float:
        return value(after, "berth_feature_value_count", **labels) - value(
            before, "berth_feature_value_count", **labels
        )

    assert delta(model="churn", feature="tenure_months") == 1
    assert delta(model="churn", feature="support_calls") == 1
    assert delta(model="churn", feature="plan") == 0  # not numeric
    assert delta(model="iris") == 0  # not opted in


def test_feature_metrics_are_sampled_one_request_in_n(make_client: AppFactory) -> None:
    client = make_client(feature_metrics=["churn"], feature_metrics_every=5)
    before = scrape(client)
    for _ in range(12):
        response = client.post("/api/v1/models/churn/predict", json={"features": CHURN_ROW})
        assert response.status_code == 200
    after = scrape(client)
    labels = {"model": "churn", "feature": "tenure_months"}
    sampled = value(after, "berth_feature_value_count", **labels) - value(
        before, "berth_feature_value_count", **labels
    )
    assert sampled == 3  # requests 1, 6 and 11


def test_gauges_defined_with_their_label_sets_and_merge_modes() -> None:
    assert metrics.MODEL_ACCURACY._labelnames == ("model", "version", "metric")
    assert metrics.FEATURE_DRIFT._labelnames == ("model", "version", "feature")
    assert metrics.MODEL_LOADED._multiprocess_mode == "livemax"
    assert metrics.REQUESTS_IN_FLIGHT._multiprocess_mode == "livesum"
    assert metrics.MODEL_ACCURACY._multiprocess_mode == "mostrecent"


# several workers -----------------------------------------------------------------------------


@pytest.mark.server
def test_metrics_are_totals_over_workers(tmp_path: Path, iris_files: tuple[Path, Path]) -> None:
    """A real `berth serve --workers 2`: any worker's /metrics counts every worker's predictions."""
    model, sample = iris_files
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "PROMETHEUS_"))}
    env["BERTH_HOME"] = str(tmp_path / "home")
    registered = berth(
        env, "models", "register", "iris", str(model), "--sample", str(sample),
        "--alias", "production", "--trust-pickle",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    created = berth(env, "keys", "create", "client")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    log_file = tmp_path / "server.log"
    with log_file.open("wb") as stderr:
        process = subprocess.Popen(
            [*BERTH, "serve", "--port", str(port), "--workers", "2"],
            env={**env, "BERTH_ACCESS_LOG": "1"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    requests = 24
    try:
        wait_ready(base, process)
        # /ready answers from whichever worker is up first: wait until both have loaded iris.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            loads = value(
                parse(httpx.get(f"{base}/metrics", timeout=10).text),
                "berth_model_load_seconds_count",
            )
            if loads == 2:
                break
            time.sleep(0.2)
        for i in range(requests):  # httpx.post: a new connection each time, any worker accepts
            response = httpx.post(
                f"{base}/api/v1/models/iris/predict",
                json={"features": IRIS_ROW},
                headers={"X-API-Key": key, "X-Request-ID": f"req-{i}"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == f"req-{i}"
        for _ in range(6):
            scraped = parse(httpx.get(f"{base}/metrics", timeout=10).text)
            ok = {"model": "iris", "version": "1", "status": "ok"}
            assert value(scraped, "berth_predictions_total", **ok) == requests
            assert value(scraped, "berth_prediction_duration_seconds_count") == requests
            # Each worker loaded the version once: both workers' files are merged.
            assert value(scraped, "berth_model_load_seconds_count") == 2
            assert (
                scraped[("berth_model_loaded", frozenset({("model", "iris"), ("version", "1")}))]
                == 1
            )
            assert value(scraped, "berth_requests_in_flight") == 0
    finally:
        process.terminate()
        process.wait(timeout=30)

    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)
    folder = next(
        r["message"].rsplit(" ", 1)[-1] for r in records if "write their metrics to" in r["message"]
    )
    assert not Path(folder).exists()  # removed when the server stopped
