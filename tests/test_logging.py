"""Logs: JSON lines with request context, console format, access log and its sampling."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from opentelemetry.sdk.trace import TracerProvider

from berth.config import Settings
from berth.errors import InvalidInput
from berth.observability.logging import (
    ConsoleFormatter,
    JsonFormatter,
    bind,
    configure_logging,
    current_request_id,
    logging_config,
    request_context,
)
from tests.test_metrics import CHURN_ROW, IRIS_ROW, AppFactory, client_factory

log = logging.getLogger("berth.test")


@pytest.fixture
def make_client(
    settings: Settings, iris_files: tuple[Path, Path], churn_files: tuple[Path, Path, Path]
) -> Iterator[AppFactory]:
    yield from client_factory(settings, iris_files, churn_files)


class Lines:
    """Formatted lines of every record reaching the root logger, formatted when logged."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)

    def text(self) -> str:
        return self.stream.getvalue()

    def records(self, logger: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.text().splitlines() if line]
        return [r for r in found if logger is None or r["logger"] == logger]


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    lines = Lines(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(lines.handler)
    root.setLevel(logging.INFO)
    yield lines
    root.removeHandler(lines.handler)
    root.setLevel(level)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo `configure_logging` (it replaces the handlers of the whole process)."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
    saved = {
        n: (
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
        )
        for n in names
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_json_line_fields(json_lines: Lines) -> None:
    log.info("loaded %s", "churn:3", extra={"model": "churn", "version": "3", "latency_ms": 1.5})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    loaded, failed = json_lines.records("berth.test")
    assert loaded["message"] == "loaded churn:3"
    assert loaded["level"] == "INFO"
    assert loaded["logger"] == "berth.test"
    assert loaded["timestamp"].endswith("Z")
    assert "T" in loaded["timestamp"]
    assert (loaded["model"], loaded["version"], loaded["latency_ms"]) == ("churn", "3", 1.5)
    assert "request_id" not in loaded  # outside a request
    assert failed["level"] == "ERROR"
    assert "ValueError: boom" in failed["exception"]


def test_unencodable_extra_is_written_as_text(json_lines: Lines) -> None:
    log.info("odd", extra={"status": object()})
    assert json_lines.records("berth.test")[0]["status"].startswith("<object")


def test_request_context_reaches_lines_and_worker_threads(json_lines: Lines) -> None:
    async def handle() -> None:
        with request_context(request_id="r-1"):
            bind(model="iris", version="2")
            assert current_request_id() == "r-1"
            await anyio.to_thread.run_sync(lambda: log.info("in a thread"))
            log.info("on the loop", extra={"version": "override"})
        log.info("after")

    anyio.run(handle)
    thread, loop, after = json_lines.records("berth.test")
    assert (thread["request_id"], thread["model"], thread["version"]) == ("r-1", "iris", "2")
    assert loop["version"] == "override"  # the record's own extra wins
    assert "request_id" not in after


def test_trace_id_from_the_active_span(json_lines: Lines) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        log.info("traced")
        expected = f"{span.get_span_context().trace_id:032x}"
    log.info("untraced")
    traced, untraced = json_lines.records("berth.test")
    assert traced["trace_id"] == expected
    assert len(traced["span_id"]) == 16
    assert "trace_id" not in untraced


def test_console_format_is_readable(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", json=False)
    with request_context(request_id="abc"):
        log.info("hello %s", "world", extra={"model": "churn"})
    log.debug("hidden")
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "hello world" in line)
    assert "INFO" in line
    assert "berth.test" in line
    assert "request_id=abc model=churn" in line
    assert not line.startswith("{")
    assert "hidden" not in err


def test_json_format_and_level(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", json=True)
    log.info("quiet")
    log.warning("loud")
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert [r["message"] for r in lines] == ["loud", "from uvicorn"]
    assert lines[1]["logger"] == "uvicorn.error"


def test_bad_level_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="BERTH_LOG_LEVEL"):
        logging_config("verbose", json=True)


def test_uvicorn_config_routes_through_the_root_handler() -> None:
    config = logging_config("debug", json=True)
    assert config["disable_existing_loggers"] is False
    assert config["formatters"]["berth"]["()"].endswith("JsonFormatter")
    assert config["root"]["level"] == "DEBUG"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name] == {"handlers": [], "propagate": True, "level": "DEBUG"}
    assert logging_config("info", json=False)["formatters"]["berth"]["()"].endswith(
        "ConsoleFormatter"
    )


def test_console_formatter_keeps_the_traceback_below() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
    try:
        raise RuntimeError("deep")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    record.model = "churn"
    first, *rest = ConsoleFormatter().format(record).splitlines()
    assert first.endswith("failed  model=churn")
    assert "RuntimeError: deep" in rest[-1]


# access log -----------------------------------------------------------------------------------


def test_access_log_line_per_request(make_client: AppFactory, json_lines: Lines) -> None:
    client = make_client(access_log=True, access_log_sample=1.0)
    secret = "berth_abc_supersecret"
    response = client.post(
        "/api/v1/models/iris/predict?token=hidden",
        json={"features": IRIS_ROW},
        headers={"X-Request-ID": "req-42", "X-API-Key": secret},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    assert client.get("/health").status_code == 200
    generated = client.get("/ready").headers["x-request-id"]
    predicted, health, ready = json_lines.records("berth.access")
    assert predicted["request_id"] == "req-42"
    assert (predicted["model"], predicted["version"]) == ("iris", "1")
    assert predicted["prediction_id"] == response.json()["prediction_id"]
    assert (predicted["method"], predicted["path"], predicted["status"]) == (
        "POST",
        "/api/v1/models/iris/predict",
        200,
    )
    assert predicted["latency_ms"] > 0
    assert predicted["client"] == "testclient"
    assert predicted["message"] == "POST /api/v1/models/iris/predict 200"
    assert health["path"] == "/health"
    assert "model" not in health
    assert ready["request_id"] == generated
    # No headers, no query string: nothing secret reaches the log.
    access = json.dumps(json_lines.records("berth.access"))
    assert secret not in access
    assert "hidden" not in access


def test_access_log_status_of_refusals_and_errors(
    make_client: AppFactory, json_lines: Lines
) -> None:
    client = make_client(access_log=True, max_body_bytes=100)
    assert client.post("/api/v1/models/iris/predict", content=b"x" * 200).status_code == 413
    assert client.post("/api/v1/models/iris/predict", json={"features": [1]}).status_code == 400
    refused, invalid = json_lines.records("berth.access")
    assert refused["status"] == 413
    assert invalid["status"] == 400


@pytest.mark.parametrize(("sample", "expected"), [(0.0, 0), (1.0, 10)])
def test_access_log_sampling(
    make_client: AppFactory, json_lines: Lines, sample: float, expected: int
) -> None:
    client = make_client(access_log=True, access_log_sample=sample)
    for _ in range(10):
        client.get("/health")
    assert len(json_lines.records("berth.access")) == expected


def test_access_log_sampling_keeps_a_fraction(make_client: AppFactory, json_lines: Lines) -> None:
    client = make_client(access_log=True, access_log_sample=0.5)
    for _ in range(200):
        client.get("/health")
    assert 50 < len(json_lines.records("berth.access")) < 150


def test_access_log_off_by_default_but_lines_still_carry_the_request_id(
    make_client: AppFactory, json_lines: Lines
) -> None:
    client = make_client()
    app = client.app
    dataplane = app.state.services.dataplane  # type: ignore[attr-defined]
    dataplane.observers.append(lambda result, inputs: log.info("observed"))
    response = client.post(
        "/api/v1/models/churn/predict",
        json={"features": CHURN_ROW},
        headers={"X-Request-ID": "in-request"},
    )
    assert response.status_code == 200
    assert json_lines.records("berth.access") == []
    (observed,) = json_lines.records("berth.test")
    assert (observed["request_id"], observed["model"], observed["version"]) == (
        "in-request",
        "churn",
        "1",
    )
