"""OpenTelemetry traces: a span per request with auth, queue wait, decode, inference and encode.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (spans go out over OTLP/HTTP) or when a
test installs a provider. Off, `span()` hands back a shared no-op context manager: no span
objects, no clock reads, no context switches — the hot path pays one boolean check.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_NOTHING: AbstractContextManager[None] = nullcontext()
_state: dict[str, Any] = {"tracer": None}


def enabled() -> bool:
    return _state["tracer"] is not None


def configure_from_env(service_name: str = "berth") -> bool:
    """Export spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; returns whether on."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    return True


def use_provider(provider: TracerProvider | None) -> None:
    """Trace with `provider` (None switches tracing off); tests pass an in-memory one."""
    _state["tracer"] = None if provider is None else provider.get_tracer("berth")


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current one, or nothing at all when tracing is off."""
    tracer: trace.Tracer | None = _state["tracer"]
    if tracer is None:
        return _NOTHING
    started: AbstractContextManager[Any] = tracer.start_as_current_span(
        name, attributes=_clean(attributes)
    )
    return started


def record_interval(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A span for something already over, e.g. time a request waited for a worker thread."""
    tracer = _state["tracer"]
    if tracer is None:
        return
    tracer.start_span(name, attributes=_clean(attributes), start_time=start_ns).end(end_time=end_ns)


def annotate(**attributes: Any) -> None:
    """Add attributes to the current span (no-op when tracing is off)."""
    if _state["tracer"] is not None:
        trace.get_current_span().set_attributes(_clean(attributes))


@contextmanager
def server_span(name: str, headers: Mapping[str, str], **attributes: Any) -> Iterator[Span | None]:
    """The request's root span, continuing a W3C `traceparent` from the caller when present."""
    tracer = _state["tracer"]
    if tracer is None:
        yield None
        return
    token = otel_context.attach(_PROPAGATOR.extract(dict(headers)))
    try:
        with tracer.start_as_current_span(
            name, kind=SpanKind.SERVER, attributes=_clean(attributes)
        ) as current:
            yield current
    finally:
        otel_context.detach(token)


def traceparent() -> str | None:
    """The W3C traceparent of the current span, to hand on (and to return to the caller)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def now_ns() -> int:
    return time.time_ns()


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
