"""`berth bench` and its engine: the HTTP client on tiny asyncio servers, then real load
against a real Berth server process."""

from __future__ import annotations

import asyncio
import json
import os
import py_compile
import re
import ssl
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from berth.config import Settings
from berth.ops.http1 import Connection, Endpoint, HttpRequest
from berth.ops.loadtest import Histogram, Load, LoadTest, Result, run, run_async
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.certificates import self_signed
from tests.conftest import Run, free_port, register_iris, serving

JSON_KEYS = {
    "target",
    "method",
    "mode",
    "concurrency",
    "rate",
    "requests",
    "duration_s",
    "rps",
    "ok",
    "errors",
    "dropped",
    "status_codes",
    "transport_errors",
    "latency_ms",
    "interrupted",
}
LATENCY_KEYS = {"min", "mean", "p50", "p90", "p99", "max"}


# the HTTP client, on canned responses ----------------------------------------------------------


@dataclass
class Canned:
    """A server that answers each request head with the next canned response."""

    responses: deque[tuple[bytes, bool]]
    port: int = 0
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.responses:
                await reader.readuntil(b"\r\n\r\n")
                data, close = self.responses.popleft()
                for start in range(0, len(data), 7):  # small pieces: the parser must reassemble
                    writer.write(data[start : start + 7])
                    await writer.drain()
                if close:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()


async def _exchanges(canned: Canned, count: int) -> list[tuple[int, bytes, bool]]:
    server = await asyncio.start_server(canned.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = Connection(Endpoint("127.0.0.1", port))
    payload = HttpRequest(f"http://127.0.0.1:{port}/x").encode()
    try:
        found = []
        for _ in range(count):
            response = await connection.exchange(payload)
            found.append((response.status, response.body, response.keep_alive))
        return found
    finally:
        connection.close()
        server.close()


def test_parser_reads_length_chunked_interim_and_until_close_bodies() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
        b"4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nTrailer: t\r\n\r\n"
    )
    canned = Canned(
        deque(
            [
                (
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                    False,
                ),
                (chunked, False),
                (b"HTTP/1.1 204 No Content\r\nServer: t\r\n\r\n", False),
                (b"HTTP/1.1 503 Busy\r\ncontent-length: 2\r\nConnection: close\r\n\r\nno", True),
                (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", True),
            ]
        )
    )
    found = run_async(_exchanges(canned, 5))
    assert found == [
        (200, b"hello", True),
        (201, b"Wikipedia in \r\n\r\nchunks.", True),
        (204, b"", True),
        (503, b"no", False),
        (200, b"until the end", False),
    ]
    assert canned.connections == 2  # reconnected after `Connection: close`


def test_a_keep_alive_connection_closed_by_the_server_is_reopened_once() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    canned = Canned(deque([(ok, True), (ok, False)]))  # closes without saying so
    assert run_async(_exchanges(canned, 2)) == [(200, b"ok", True), (200, b"ok", True)]
    assert canned.connections == 2


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # reads requests, never answers


async def _against_silent_server(load: Load) -> Result:
    server = await asyncio.start_server(_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await LoadTest(HttpRequest(f"http://127.0.0.1:{port}/"), load).run()
    finally:
        server.close()


def test_transport_failures_are_counted_by_kind() -> None:
    timed_out = run_async(_against_silent_server(Load(concurrency=2, requests=4, timeout=0.2)))
    assert timed_out.transport_errors == {"timeout": 4}
    assert (timed_out.requests, timed_out.errors, timed_out.latency.p50) == (4, 4, None)
    refused = run(HttpRequest(f"http://127.0.0.1:{free_port()}/"), Load(requests=3))
    assert refused.transport_errors == {"connection_refused": 3}
    assert refused.to_dict()["status_codes"] == {}


def test_fixed_rate_drops_what_it_cannot_send_and_counts_it() -> None:
    """One connection that never gets an answer: one request in flight, one waiting, the
    rest of the schedule dropped, and nothing sent twice."""
    load = Load(concurrency=1, rate=40, duration=0.5, timeout=0.3)
    result = run_async(_against_silent_server(load))
    assert result.dropped > 0
    assert result.requests + result.dropped == 20
    assert result.transport_errors == {"timeout": result.requests}
    assert result.to_dict()["mode"] == "rate"


def test_histogram_percentiles_are_close_ordered_and_bounded() -> None:
    histogram = Histogram()
    for micros in range(1, 100_001):
        histogram.record(micros)
    p50, p90, p99, top = histogram.percentiles((0.5, 0.9, 0.99, 1.0))
    assert abs(p50 - 50_000) / 50_000 < 0.002
    assert abs(p99 - 99_000) / 99_000 < 0.002
    assert p50 <= p90 <= p99 <= top == histogram.maximum == 100_000
    histogram.record(10**15)  # absurd values are clamped, not an IndexError
    assert histogram.percentiles((1.0,)) == [histogram.maximum]


# against a real server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    base: str
    key: str


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, iris_files: tuple[Path, Path]
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("bench") / "home"
    settings = Settings(home=home)
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    _, key = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings))).create(
        "bench"
    )
    registry.db.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(home)
    with serving(env) as (base, _port):
        yield Server(base, key)


@pytest.fixture
def bench(run: Run) -> Run:
    """`berth bench` through the real entry point."""
    return run


def _predictions(server: Server) -> int:
    text = httpx.get(f"{server.base}/metrics").text
    found = re.findall(r'^berth_predictions_total\{[^}]*status="ok"[^}]*\} (\S+)$', text, re.M)
    return int(sum(float(v) for v in found))


def _summary(bench: Run, server: Server, *args: str) -> dict[str, object]:
    outcome = bench(
        "bench", *args, "--server", server.base, "--api-key", server.key, "--warmup", "0", "--json"
    )
    assert outcome.code == 0, outcome.err
    summary = json.loads(outcome.out)
    assert isinstance(summary, dict)
    return summary


def _check_clean(summary: dict[str, object]) -> int:
    assert set(summary) == JSON_KEYS
    requests = summary["requests"]
    assert isinstance(requests, int)
    assert requests > 0
    assert summary["errors"] == 0
    assert summary["ok"] == requests
    assert summary["status_codes"] == {"200": requests}
    assert summary["transport_errors"] == {}
    latency = summary["latency_ms"]
    assert isinstance(latency, dict)
    assert set(latency) == LATENCY_KEYS
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["max"]
    return requests


@pytest.mark.server
def test_fixed_concurrency_on_v1_by_model_reference(bench: Run, server: Server) -> None:
    summary = _summary(bench, server, "iris", "--concurrency", "4", "--duration", "0.5")
    _check_clean(summary)
    assert summary["target"] == f"{server.base}/api/v1/models/iris/predict"
    assert (summary["mode"], summary["concurrency"], summary["rate"]) == ("concurrency", 4, None)


@pytest.mark.server
def test_fixed_concurrency_on_v2_with_an_alias_and_rows(bench: Run, server: Server) -> None:
    summary = _summary(
        bench, server, "iris@production", "--protocol", "v2", "--rows", "3", "--duration", "0.5"
    )
    _check_clean(summary)
    assert summary["target"] == f"{server.base}/v2/models/iris/versions/1/infer"


@pytest.mark.server
def test_requests_sends_exactly_that_many(server: Server) -> None:
    request = HttpRequest(
        f"{server.base}/api/v1/models/iris/batch-predict",
        "POST",
        {"Content-Type": "application/json"},
        b'{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}',
        server.key,
    )
    before = _predictions(server)
    result = run(request, Load(concurrency=5, requests=37))
    assert (result.requests, result.status_codes) == (37, {200: 37})
    assert _predictions(server) - before == 37


@pytest.mark.server
def test_fixed_rate_sends_on_schedule(bench: Run, server: Server) -> None:
    summary = _summary(bench, server, "iris:1", "--rate", "50", "--duration", "1")
    requests = _check_clean(summary)
    assert 45 <= requests <= 55
    assert (summary["mode"], summary["rate"], summary["dropped"]) == ("rate", 50.0, 0)
    duration = summary["duration_s"]
    assert isinstance(duration, float)
    assert 0.9 <= duration < 1.5


@pytest.mark.server
def test_a_wrong_key_is_counted_by_the_engine_and_refused_by_the_command(
    bench: Run, server: Server
) -> None:
    request = HttpRequest(f"{server.base}/api/v1/models/iris", api_key="berth_wrong_key")
    result = run(request, Load(concurrency=2, requests=6))
    assert (result.status_codes, result.errors, result.ok) == ({401: 6}, 6, 0)
    outcome = bench("bench", "iris", "--server", server.base, "--api-key", "nope", "--json")
    assert outcome.code == 1
    assert outcome.out == ""
    assert "401" in outcome.err
    assert "--api-key" in outcome.err
    assert len(outcome.err.strip().splitlines()) == 1


@pytest.mark.server
def test_an_unknown_model_or_alias_is_a_clean_error(bench: Run, server: Server) -> None:
    for target, expected in (("nosuch", "nosuch"), ("iris@staging", "no alias 'staging'")):
        outcome = bench("bench", target, "--server", server.base, "--api-key", server.key)
        assert outcome.code == 1
        assert expected in outcome.err
        assert len(outcome.err.strip().splitlines()) == 1


def test_help_has_an_example_and_the_json_keys(bench: Run) -> None:
    shown = bench("bench", "--help")
    assert shown.code == 0
    assert "Example: berth bench" in shown.out
    assert all(key in shown.out for key in JSON_KEYS | LATENCY_KEYS)


def test_an_unreachable_server_is_a_clean_error(bench: Run) -> None:
    outcome = bench("bench", "/health", "--server", f"http://127.0.0.1:{free_port()}")
    assert outcome.code == 1
    assert "cannot reach" in outcome.err
    assert "--server" in outcome.err


@pytest.mark.server
def test_a_path_target_without_json_prints_a_summary_table(bench: Run, server: Server) -> None:
    outcome = bench(
        "bench", "/health", "--server", server.base, "--requests", "20", "--warmup", "0"
    )
    assert outcome.code == 0, outcome.err
    assert f"GET {server.base}/health" in outcome.out
    assert "200: 20" in outcome.out
    assert "p99" in outcome.out


@pytest.mark.server
def test_locust_writes_a_compiling_file_without_the_key(
    bench: Run, server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "locustfile.py"
    outcome = bench(
        "bench", "iris", "--server", server.base, "--api-key", server.key, "--locust", str(path)
    )
    assert outcome.code == 0, outcome.err
    assert f"locust -f {path}" in outcome.out
    py_compile.compile(str(path), doraise=True)
    source = path.read_text()
    assert "'/api/v1/models/iris/predict'" in source
    assert f"HOST = '{server.base}'" in source
    assert '"features"' in source
    assert "FastHttpUser" in source
    assert "BERTH_API_KEY" in source
    assert server.key not in source


def _self_signed_context(folder: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    cert, key = self_signed(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_https_with_and_without_certificate_verification(tmp_path: Path) -> None:
    canned = Canned(deque([(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False)] * 3))
    context = _self_signed_context(tmp_path)

    async def against_tls_server(verify: bool) -> Result:
        server = await asyncio.start_server(canned.handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        request = HttpRequest(f"https://127.0.0.1:{port}/", verify_tls=verify)
        try:
            return await LoadTest(request, Load(concurrency=1, requests=3)).run()
        finally:
            server.close()

    assert run_async(against_tls_server(verify=False)).status_codes == {200: 3}
    refused = run_async(against_tls_server(verify=True))
    assert refused.transport_errors == {"tls": 3}
