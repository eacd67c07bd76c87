"""Traces: the span tree of a prediction, W3C propagation, and nothing when tracing is off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from berth.config import Settings
from berth.observability import tracing
from tests.conftest import ApiSetup

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


@pytest.fixture(params=["worker thread", "event loop"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Both ways a prediction runs: a thread hop (with its queue wait), or inline for fast models."""
    inline_ms = 0.0 if request.param == "worker thread" else 1000.0
    return settings.model_copy(update={"inline_predict_ms": inline_ms})


def _by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


def test_prediction_span_tree(
    api: ApiSetup, spans: InMemorySpanExporter, settings: Settings
) -> None:
    response = api.client.post(
        "/api/v1/models/iris/batch-predict",
        json={"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
        headers={**api.auth(), "traceparent": CALLER},
    )
    assert response.status_code == 200
    found = _by_name(spans.get_finished_spans())
    root = found["POST /api/v1/models/iris/batch-predict"]
    in_thread = settings.inline_predict_ms == 0
    expected = {"auth", "predict", "decode and validate", "inference", "encode"}
    assert expected | ({"queue wait"} if in_thread else set()) <= set(found)
    assert in_thread == ("queue wait" in found)
    assert root.context.trace_id == int(CALLER_TRACE, 16)  # the caller's trace continues
    assert root.attributes["http.response.status_code"] == 200
    for child in ("auth", "predict", "encode"):
        assert found[child].parent.span_id == root.context.span_id
    for grandchild in ("queue wait", "decode and validate", "inference"):
        if grandchild not in found:
            continue
        assert found[grandchild].parent.span_id == found["predict"].context.span_id
    assert found["predict"].attributes["berth.model"] == "iris"
    assert found["predict"].attributes["berth.version"] == 1
    assert found["inference"].attributes["berth.batch_size"] == 2
    returned = response.headers["traceparent"]
    assert returned.split("-")[1] == CALLER_TRACE


def test_v2_infer_is_traced_too(api: ApiSetup, spans: InMemorySpanExporter) -> None:
    body = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
    }
    assert (
        api.client.post("/v2/models/iris/infer", json=body, headers=api.auth()).status_code == 200
    )
    names = {s.name for s in spans.get_finished_spans()}
    assert {"POST /v2/models/iris/infer", "inference", "encode"} <= names


def test_no_spans_and_no_header_when_tracing_is_off(api: ApiSetup) -> None:
    assert not tracing.enabled()
    response = api.client.post(
        "/api/v1/models/iris/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}, headers=api.auth()
    )
    assert response.status_code == 200
    assert "traceparent" not in response.headers
    assert tracing.span("anything") is tracing.span("other")  # the one shared no-op


def test_otlp_export_is_configured_only_by_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure_from_env() is False
    assert not tracing.enabled()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    try:
        assert tracing.configure_from_env() is True
        assert tracing.enabled()
    finally:
        tracing.use_provider(None)
