"""The gRPC server inside the app, in process: traces, rate limits, the shared concurrency cap
and the access log, each checked where it is cheap to arrange (the real-server tests are in
tests/test_grpc.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from berth.api import v2
from berth.api.app import build_services
from berth.api.services import Services
from berth.config import Settings
from berth.grpc.generated import open_inference_grpc_pb2 as pb
from berth.observability import tracing
from berth.observability.logging import JsonFormatter
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.server import create_server_app
from tests.conftest import register_iris
from tests.ports import free_port

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class InProcess:
    infer: grpc.UnaryUnaryMultiCallable
    svc: Services
    key: str
    slow_key: str


@pytest.fixture
def served(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[InProcess]:
    settings = settings.model_copy(update={"grpc_port": free_port(), "access_log": True})
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    _, key = keys.create("fast", ("predict", "read"))
    _, slow_key = keys.create("slow", ("predict", "read"), rate="2/m")
    svc = build_services(settings, registry)
    with (
        TestClient(create_server_app(settings, svc)),  # its lifespan runs the gRPC server
        grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel,
    ):
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        yield InProcess(infer, svc, key, slow_key)
    registry.db.dispose()


def _iris() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.asarray([[5.1, 3.5, 1.4, 0.2]], "<f4").tobytes())
    return request


def test_the_callers_trace_continues_and_comes_back(served: InProcess) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        _reply, call = served.infer.with_call(
            _iris(), metadata=[("x-api-key", served.key), ("traceparent", CALLER)]
        )
    finally:
        tracing.use_provider(None)
    found = {span.name: span for span in exporter.get_finished_spans()}
    root = found["gRPC ModelInfer"]
    assert root.context.trace_id == int(CALLER_TRACE, 16)
    assert {"auth", "predict", "encode"} <= set(found)
    assert found["predict"].parent.span_id == root.context.span_id
    returned = dict(call.trailing_metadata())["traceparent"]
    assert returned.split("-")[1] == CALLER_TRACE


def test_a_key_over_its_rate_gets_resource_exhausted_with_a_retry_time(served: InProcess) -> None:
    metadata = [("x-api-key", served.slow_key)]
    for _ in range(2):
        served.infer(_iris(), metadata=metadata)
    with pytest.raises(grpc.RpcError) as raised:
        served.infer(_iris(), metadata=metadata)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate" in raised.value.details()
    trailers = dict(raised.value.trailing_metadata())
    assert int(trailers["retry-after"]) >= 1
    assert trailers["x-request-id"]
    served.infer(_iris(), metadata=[("x-api-key", served.key)])  # others are not held back


def test_grpc_counts_against_the_workers_concurrency_cap(served: InProcess) -> None:
    cap = served.svc.cap
    cap.in_flight = cap.limit  # as if REST requests held every slot
    try:
        with pytest.raises(grpc.RpcError) as raised:
            served.infer(_iris(), metadata=[("x-api-key", served.key)])
    finally:
        cap.in_flight = 0
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "concurrent predictions" in raised.value.details()
    assert dict(raised.value.trailing_metadata())["retry-after"] == "1"
    served.infer(_iris(), metadata=[("x-api-key", served.key)])
    assert cap.in_flight == 0  # the slot is given back


@contextmanager
def access_lines() -> Iterator[io.StringIO]:
    """The access log's lines written meanwhile, as JSON, one per line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())  # formatted as it is written, in the call's context
    access = logging.getLogger("berth.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        access.removeHandler(handler)
        access.setLevel(level)


def test_each_call_writes_a_json_access_line_with_its_request_id(served: InProcess) -> None:
    with access_lines() as stream:
        served.infer(_iris(), metadata=[("x-api-key", served.key), ("x-request-id", "call-7")])
        with pytest.raises(grpc.RpcError):
            served.infer(_iris(), metadata=[("x-api-key", "wrong")])
    ok, refused = (json.loads(line) for line in stream.getvalue().splitlines())
    assert ok["message"] == "gRPC ModelInfer OK"
    assert ok["request_id"] == "call-7"
    assert ok["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert ok["status"] == "OK"
    assert ok["client"] == "127.0.0.1"
    assert ok["latency_ms"] > 0
    assert refused["status"] == "UNAUTHENTICATED"
    assert refused["request_id"]  # a new one, as REST gives


def test_the_access_line_tells_a_passed_deadline_from_a_cancelled_call(
    served: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    inference = v2.run_inference
    started = threading.Semaphore(0)

    async def slow(*args: Any, **kwargs: Any) -> Any:
        started.release()
        await asyncio.sleep(3)
        return await inference(*args, **kwargs)

    monkeypatch.setattr(v2, "run_inference", slow)
    metadata = [("x-api-key", served.key)]
    with access_lines() as stream:
        with pytest.raises(grpc.RpcError) as raised:
            served.infer(_iris(), metadata=metadata, timeout=1.0)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert started.acquire(timeout=5)
        call = served.infer.future(_iris(), metadata=metadata)
        assert started.acquire(timeout=5)  # cancelled in the handler, not before it
        call.cancel()
        ended = time.monotonic() + 5
        while stream.getvalue().count("\n") < 2 and time.monotonic() < ended:
            time.sleep(0.02)
    statuses = [json.loads(line)["status"] for line in stream.getvalue().splitlines()]
    assert statuses == ["DEADLINE_EXCEEDED", "CANCELLED"]
