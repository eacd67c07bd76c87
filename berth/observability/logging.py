"""Logs: JSON lines (default) or a readable console format (dev), with request context.

Every line is one JSON object: `timestamp` (ISO 8601, UTC), `level`, `logger`, `message`, and
whichever of `request_id`, `trace_id`, `span_id`, `model`, `version`, `prediction_id`,
`latency_ms`, `status`, `method`, `path`, `client` are known. They come from, in order of
precedence: the record (`log.info("...", extra={"model": "churn"})`), the current request's
context (`bind(...)`, opened per request by the access-log middleware, so every line logged while
handling a request carries its request id, also from worker threads), and the active
OpenTelemetry span (when opentelemetry is installed).

Nothing here reads headers or bodies: secrets cannot reach a log line through this module.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from berth.errors import InvalidInput

try:  # tracing is optional: lines carry trace ids only when opentelemetry is installed
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - depends on the installation
    _otel_trace = None  # type: ignore[assignment]

FIELDS = (
    "request_id",
    "trace_id",
    "span_id",
    "model",
    "version",
    "prediction_id",
    "latency_ms",
    "status",
    "method",
    "path",
    "client",
)
"""Context fields a line may carry, in the order they are written."""

_REQUEST: ContextVar[dict[str, Any] | None] = ContextVar("berth_request_log", default=None)


# request context ----------------------------------------------------------------------------


@contextmanager
def request_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Fields every line logged inside the block carries; `bind` adds more while it is open."""
    context = {k: v for k, v in fields.items() if v is not None}
    token = _REQUEST.set(context)
    try:
        yield context
    finally:
        _REQUEST.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the current request's context (no-op outside a request).

    The context is one mutable dict per request, so fields bound deep in a handler (or in a worker
    thread, which runs in a copy of the context) are seen by the access-log line at its end.
    """
    context = _REQUEST.get()
    if context is not None:
        context.update({k: v for k, v in fields.items() if v is not None})


def current_request_id() -> str | None:
    context = _REQUEST.get()
    found = context.get("request_id") if context else None
    return str(found) if found is not None else None


def _trace_fields() -> dict[str, str]:
    if _otel_trace is None:
        return {}
    span = _otel_trace.get_current_span().get_span_context()
    if not span.is_valid:
        return {}
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}


def context_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The context fields of a record: its own extras over the request's over the trace's."""
    found: dict[str, Any] = _trace_fields()
    found.update(_REQUEST.get() or {})
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            found[name] = value
    return {name: found[name] for name in FIELDS if name in found}


# formatters ---------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson); values it cannot encode are written as strings."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(context_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """Readable lines for a terminal: `12:00:01.234 INFO  berth.api  message  key=value ...`."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s  %(message)s", "%H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = context_fields(record)
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the fields
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{first}  {pairs}{newline}{rest}"


# configuration ------------------------------------------------------------------------------


def _level(level: str) -> str:
    name = level.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise InvalidInput(
            f"log level {level!r} is not one of debug, info, warning, error, critical; "
            "fix BERTH_LOG_LEVEL"
        )
    return name


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to `sys.stderr` as it is when the record is written.

    A plain StreamHandler keeps the stream it was configured with: when a caller swaps
    `sys.stderr` (a test capturing output, an embedding application) and closes the old one,
    every later record fails with "I/O operation on closed file" and a traceback.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # always the current sys.stderr


def logging_config(level: str, json: bool) -> dict[str, Any]:
    """A `logging.config.dictConfig` document: everything, uvicorn included, through one handler.

    `berth serve` applies it in its own process and hands it to uvicorn as `log_config`, which
    applies it in every worker process.
    """
    name = _level(level)
    formatter = (
        "berth.observability.logging.JsonFormatter"
        if json
        else ("berth.observability.logging.ConsoleFormatter")
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"berth": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "berth.observability.logging.StderrHandler", "formatter": "berth"}
        },
        "root": {"handlers": ["stderr"], "level": name},
        "loggers": {
            **{
                logger: {"handlers": [], "propagate": True, "level": name}
                for logger in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
            },
            # Migrations announce a dozen plugins at INFO in every worker at start.
            "alembic": {"level": "WARNING" if name in ("DEBUG", "INFO") else name},
        },
    }


def configure_logging(level: str, json: bool) -> None:
    """Route every logger to stderr, as JSON lines or (json=False) readable console lines."""
    logging.config.dictConfig(logging_config(level, json))
