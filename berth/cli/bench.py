"""`berth bench`: load a model or endpoint over HTTP or gRPC and report req/s, latency, errors."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from berth.cli.context import console, err_console, settings
from berth.durations import parse_duration
from berth.errors import InvalidInput

# The load generator (asyncio, ssl, orjson) is imported when `berth bench` runs, not by every
# command that registers this one.
if TYPE_CHECKING:
    import asyncio

    from berth.ops.http1 import HttpRequest
    from berth.ops.loadtest import Load, LoadTest, Progress, Result

DEFAULT_CONCURRENCY = 8
DEFAULT_RATE_CONCURRENCY = 32
REFRESH_SECONDS = 0.25


class Protocol(StrEnum):
    v1 = "v1"
    v2 = "v2"
    grpc = "grpc"


def bench(
    target: str = typer.Argument(
        ..., help="Model reference (iris, iris:2, iris@production), path on --server, or URL."
    ),
    server: str | None = typer.Option(
        None, help="Berth server URL (default http://BERTH_HOST:BERTH_PORT)."
    ),
    protocol: Protocol = typer.Option(
        Protocol.v1,
        help="For a model: Berth v1, Open Inference Protocol v2 over REST, or the Open "
        "Inference Protocol over gRPC (statuses counted as their HTTP equivalents).",
    ),
    grpc_port: int | None = typer.Option(
        None,
        "--grpc-port",
        help="With --protocol grpc: the server's gRPC port (default BERTH_GRPC_PORT); the host "
        "is --server's.",
    ),
    body: str | None = typer.Option(
        None, help="JSON body or @file.json (default for a model: its registered example row)."
    ),
    rows: int = typer.Option(
        1, min=1, help="Rows per request in the default model body (v1: batch-predict if > 1)."
    ),
    api_key: str | None = typer.Option(
        None, envvar="BERTH_API_KEY", help="API key, sent as X-API-Key.", show_default=False
    ),
    concurrency: int | None = typer.Option(
        None,
        min=1,
        help=f"Connections (default {DEFAULT_CONCURRENCY}); with --rate, the most requests in "
        f"flight (default {DEFAULT_RATE_CONCURRENCY}).",
    ),
    rate: float | None = typer.Option(
        None, help="Start this many requests per second (open loop) instead of a fixed concurrency."
    ),
    duration: str | None = typer.Option(
        None, help="Measured time, e.g. 30s or 5m, or seconds (default 10s)."
    ),
    requests: int | None = typer.Option(
        None, min=1, help="Measured requests to send, instead of --duration."
    ),
    warmup: str = typer.Option("1s", help="Load before measuring, not counted (0 for none)."),
    timeout: str = typer.Option("10s", help="Longest one request may take."),
    insecure: bool = typer.Option(
        False, "--insecure", help="HTTPS: do not verify the certificate (self-signed test servers)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as JSON (see the keys above); no live display."
    ),
    locust: Path | None = typer.Option(
        None, "--locust", help="Write a locustfile for the same request to this file and exit."
    ),
) -> None:
    """Load a model or endpoint over HTTP and report req/s, latency percentiles and errors.

    For a model reference the requests go to its predict route (v1, or v2 infer) with its
    registered example row as the body; a path (/health) or URL is fetched with GET, or POSTed
    with --body. Without --rate each connection sends its next request when the last one is
    answered; with --rate, requests start on a fixed schedule and latency counts from the
    scheduled time, so queueing is not hidden. Ctrl-C ends the run early with a summary.

    --json keys: target, method, mode (concurrency|rate), concurrency, rate, requests,
    duration_s, rps, ok (2xx), errors (non-2xx and transport failures), dropped (rate mode:
    requests not sent because too many were waiting), status_codes {"200": n},
    transport_errors {kind: n}, latency_ms {min, mean, p50, p90, p99, max}, interrupted.

    Example: berth bench iris@production --concurrency 16 --duration 30s --api-key $KEY

    Example: berth bench churn --protocol v2 --rate 200 --duration 1m --json > churn-200.json

    Example: berth bench iris --protocol grpc --grpc-port 8322 --concurrency 64

    Example: berth bench iris --rate 100 --locust locustfile.py
    """
    from berth.ops.loadtest import LoadTest, run_async
    from berth.ops.targets import Target, preflight, resolve_target

    load = _load(concurrency, rate, duration, requests, warmup, timeout)
    grpc = protocol is Protocol.grpc
    if grpc and locust is not None:
        raise InvalidInput("--locust writes an HTTP locustfile; use --protocol v1 or v2")
    spec = Target(
        target=target,
        server=server or _default_server(),
        protocol="v2" if grpc else protocol.value,
        body=_body(body),
        rows=rows,
        api_key=api_key,
        verify_tls=not insecure,
    )
    request = run_async(resolve_target(spec, load.timeout))
    if locust is not None:
        _write_locustfile(locust, request, load)
        return
    model = f"model '{target}'" if spec.is_model else None
    if grpc:
        test = _grpc_test(request, load, grpc_port, insecure, model)
    else:
        run_async(preflight(request, load.timeout, model))
        test = LoadTest(request, load)
    if not as_json:
        err_console.print(_plan(test, load), highlight=False, soft_wrap=True)
    result = run_async(_measure(test, live=not as_json and console.is_terminal))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        console.print(summary_table(result))


# options --------------------------------------------------------------------------------------


def _load(
    concurrency: int | None,
    rate: float | None,
    duration: str | None,
    requests: int | None,
    warmup: str,
    timeout: str,
) -> Load:
    from berth.ops.loadtest import Load

    if duration is not None and requests is not None:
        raise InvalidInput("give --duration or --requests, not both")
    default = DEFAULT_CONCURRENCY if rate is None else DEFAULT_RATE_CONCURRENCY
    return Load(
        concurrency=concurrency or default,
        rate=rate,
        duration=None if duration is None else _seconds(duration, "--duration"),
        requests=requests,
        warmup=_seconds(warmup, "--warmup"),
        timeout=_seconds(timeout, "--timeout"),
    )


def _seconds(text: str, option: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text).total_seconds()
        except InvalidInput as exc:
            raise InvalidInput(f"{option}: {exc.message}, or a number of seconds") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(f"{option}: {text} is not a number of seconds; write e.g. 10s or 2.5")
    return seconds


def _grpc_test(
    request: HttpRequest, load: Load, grpc_port: int | None, insecure: bool, model: str | None
) -> LoadTest:
    """The same inference request over gRPC, checked once before the run."""
    from urllib.parse import urlsplit

    from berth.grpc.load_client import INFER, GrpcExchanger, infer_payload
    from berth.ops.loadtest import LoadTest, run_async
    from berth.ops.targets import refused

    if model is None:
        raise InvalidInput("--protocol grpc loads a model or endpoint by name, not a path or URL")
    port = grpc_port or settings().grpc_port
    if port is None:
        raise InvalidInput("--protocol grpc needs the server's gRPC port: pass --grpc-port")
    parts = urlsplit(request.url)
    tls = parts.scheme == "https"
    if tls and insecure:
        raise InvalidInput("--insecure is for HTTPS; over gRPC with TLS the certificate is checked")
    host = parts.hostname or "127.0.0.1"
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    metadata = [("x-api-key", request.api_key)] if request.api_key else []
    payload = infer_payload(parts.path, request.body)

    def connect() -> GrpcExchanger:
        return GrpcExchanger(target, metadata, tls=tls)

    async def check() -> None:
        first = connect()
        try:
            response = await first.exchange(payload)
        finally:
            await first.close()
        problem = refused(response, f"grpc://{target}", model)
        if problem is None and response.status == 503 and b"connect" in response.body.lower():
            problem = InvalidInput(
                f"nothing answers gRPC on {target}; start the server with --grpc-port {port} "
                "or pass the port it uses"
            )
        if problem is not None:
            raise problem

    run_async(check())
    shown = ("gRPC", f"grpc://{target}{INFER}")
    return LoadTest(request, load, connect=connect, payload=payload, shown=shown)


def _default_server() -> str:
    current = settings()
    host = "127.0.0.1" if current.host in ("0.0.0.0", "::", "") else current.host  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if current.tls_cert_file else "http"
    return f"{scheme}://{host}:{current.port}"


def _body(text: str | None) -> bytes | None:
    import orjson

    if text is None:
        return None
    if text.startswith("@"):
        try:
            data = Path(text[1:]).expanduser().read_bytes()
        except OSError as exc:
            raise InvalidInput(
                f"--body {text}: {exc.strerror or exc}; give an existing file"
            ) from exc
    else:
        data = text.encode()
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"--body is not valid JSON ({exc}); pass JSON text or @file.json"
        ) from exc
    return data


def _write_locustfile(path: Path, request: HttpRequest, load: Load) -> None:
    from berth.ops import locust as locustfiles

    run_time = f"{math.ceil(load.seconds)}s" if load.seconds else "30s"
    source = locustfiles.locustfile(request, path, load.concurrency, load.rate, run_time)
    try:
        path.write_text(source)
    except OSError as exc:
        raise InvalidInput(f"--locust {path}: {exc.strerror or exc}; give a writable path") from exc
    console.print(f"Wrote {path}. Run it with:", highlight=False, soft_wrap=True)
    hint = locustfiles.run_hint(path, load.concurrency, run_time)
    console.print(hint, highlight=False, soft_wrap=True, markup=False)


# running and showing --------------------------------------------------------------------------


def _plan(test: LoadTest, load: Load) -> str:
    pace = (
        f"{load.concurrency} connections"
        if load.rate is None
        else f"{load.rate:g} req/s over up to {load.concurrency} connections"
    )
    amount = f"{load.requests} requests" if load.requests else f"{load.seconds:g}s"
    warmup = f" after {load.warmup:g}s of warm-up" if load.warmup else ""
    return f"Loading {test.method} {test.url}: {pace}, {amount}{warmup}"


async def _measure(test: LoadTest, live: bool) -> Result:
    import asyncio

    running = asyncio.ensure_future(test.run())
    restore = _stop_on_interrupt(test.stop)
    try:
        if live:
            await _show(test, running)
        return await running
    finally:
        restore()


def _stop_on_interrupt(stop: Callable[[], None]) -> Callable[[], None]:
    """Ctrl-C ends the run early (with its summary) instead of losing it; returns the undo."""
    import asyncio

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        return lambda: None

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGINT)

    return restore


async def _show(test: LoadTest, running: asyncio.Future[Result]) -> None:
    import asyncio

    from rich.live import Live

    view = LiveView()
    with Live(view.render(test.progress()), console=console, auto_refresh=False) as live:
        # refreshed from this loop, not rich's thread, which would compete for the GIL
        while not running.done():
            await asyncio.wait({running}, timeout=REFRESH_SECONDS)
            live.update(view.render(test.progress()), refresh=True)


class LiveView:
    """The progress table; remembers the last sample to show the current rate."""

    def __init__(self) -> None:
        self._last = (0.0, 0)

    def render(self, progress: Progress) -> Table:
        elapsed, requests = self._last
        if progress.requests < requests:  # counting restarted after the warm-up
            elapsed, requests = 0.0, 0
        span = progress.elapsed - elapsed
        current = (progress.requests - requests) / span if span > 0 else 0.0
        average = progress.requests / progress.elapsed if progress.elapsed > 0 else 0.0
        self._last = (progress.elapsed, progress.requests)
        table = Table(
            "phase", "elapsed", "requests", "req/s now", "req/s avg", "p50 ms", "p99 ms", "errors"
        )
        table.add_column("status codes")
        table.add_row(
            progress.phase,
            f"{progress.elapsed:.1f}s",
            str(progress.requests),
            f"{current:.0f}",
            f"{average:.0f}",
            _ms(progress.p50),
            _ms(progress.p99),
            str(progress.errors),
            _counts([*progress.status_codes.items(), *progress.transport_errors.items()]),
        )
        return table


def summary_table(result: Result) -> Table:
    latency = result.latency
    table = Table("", "", show_header=False)
    rows = [
        ("target", f"{result.method} {result.url}"),
        ("requests", str(result.requests)),
        ("duration", f"{result.duration:.2f}s" + (" (interrupted)" if result.interrupted else "")),
        ("req/s", f"{result.rps:.1f}"),
        ("latency p50", f"{_ms(latency.p50)} ms"),
        ("latency p90", f"{_ms(latency.p90)} ms"),
        ("latency p99", f"{_ms(latency.p99)} ms"),
        ("latency max", f"{_ms(latency.maximum)} ms"),
        ("latency mean", f"{_ms(latency.mean)} ms"),
        ("errors", str(result.errors)),
        ("status codes", _counts(result.status_codes.items())),
        ("transport errors", _counts(result.transport_errors.items())),
    ]
    if result.load.rate is not None:
        rows.append(("dropped", str(result.dropped)))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _counts(counts: Iterable[tuple[object, int]]) -> str:
    return "  ".join(f"{key}: {count}" for key, count in counts) or "-"
