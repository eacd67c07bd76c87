"""Clients that send slowly, leave mid-body, or compress: a real `berth serve` over sockets.

Slow bodies must not hold prediction slots (64 connections trickling bodies once shut out every
other prediction with 503), must be cut off with 408, and clients that leave mid-body are
counted, not logged as errors.
"""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BERTH, create_key, free_port, iris_home, wait_ready

pytestmark = pytest.mark.server

BODY_TIMEOUT = 3.0
ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass(frozen=True)
class Server:
    base: str
    port: int
    key: str
    log: Path


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, iris_files: tuple[Path, Path]
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("slow")
    env = iris_home(folder / "home", iris_files)
    env["BERTH_BODY_TIMEOUT_SECONDS"] = str(BODY_TIMEOUT)
    key = create_key(env, "client")
    port = free_port()
    log = folder / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*BERTH, "serve", "--port", str(port)], env=env, stdout=sink, stderr=sink
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process)
            yield Server(base=base, port=port, key=key, log=log)
        finally:
            process.terminate()
            process.wait(timeout=15)


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _slow_request(server: Server, length: int) -> socket.socket:
    """A prediction request whose headers promise `length` body bytes; no body sent yet."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        (
            "POST /api/v1/models/iris/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-API-Key: {server.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
    )
    return sock


def test_slow_bodies_hold_no_prediction_slots_and_are_cut_off_with_408(server: Server) -> None:
    """64 connections (the default cap) trickle 1,000-byte bodies, one byte per 0.5 s."""
    before = _metric(server, "berth_request_body_failures_total", reason="timeout")
    opened = time.monotonic()
    slow = [_slow_request(server, 1000) for _ in range(64)]
    replies: dict[socket.socket, bytes] = {}
    stop = threading.Event()

    def trickle() -> None:
        """A byte per connection every 0.5 s, until the server answers on it, and none in the
        last 0.3 s before the server's cut-off: a byte that reaches a connection the server is
        closing draws a reset that discards its unread answer."""
        sending_until = opened + BODY_TIMEOUT - 0.3
        while not stop.is_set() and len(replies) < len(slow):
            waiting = [sock for sock in slow if sock not in replies]
            answered, _, _ = select.select(waiting, [], [], 0)
            for sock in answered:
                replies[sock] = _read_until_closed(sock)
            if time.monotonic() < sending_until:
                for sock in waiting:
                    if sock not in replies:
                        sock.send(b" ")
            stop.wait(0.5 if time.monotonic() < sending_until else 0.05)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(0.5)  # every slow request is in, reading its body
        started = time.monotonic()
        with httpx.Client(headers={"X-API-Key": server.key}) as client:
            answers = [
                client.post(f"{server.base}/api/v1/models/iris/predict", json={"features": ROW})
                for _ in range(40)
            ]
        assert time.monotonic() - started < BODY_TIMEOUT  # all while the slow ones still trickle
        assert [a.status_code for a in answers] == [200] * 40, answers[0].text
        trickler.join(timeout=BODY_TIMEOUT + 30)
    finally:
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()
    assert len(replies) == 64
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in replies.values())
    assert all(b"BERTH_BODY_TIMEOUT_SECONDS" in r for r in replies.values())
    assert _metric(server, "berth_request_body_failures_total", reason="timeout") == before + 64


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_leaving_mid_body_is_counted_not_logged_as_an_error(server: Server) -> None:
    before = _metric(server, "berth_request_body_failures_total", reason="disconnect")
    for _ in range(5):
        sock = _slow_request(server, 1000)
        sock.sendall(b'{"features": [5.1')
        sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _metric(server, "berth_request_body_failures_total", reason="disconnect") >= before + 5:
            break
        time.sleep(0.1)
    assert _metric(server, "berth_request_body_failures_total", reason="disconnect") == before + 5
    log = server.log.read_text()
    assert "Traceback" not in log
    assert '"level":"ERROR"' not in log, log[-2000:]


def test_tritonclient_with_compressed_requests_and_responses(
    server: Server, iris_files: tuple[Path, Path]
) -> None:
    """tritonclient's `request_compression_algorithm` sends Content-Encoding gzip/deflate."""
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    rows = np.load(iris_files[1])[:20]
    data = triton.InferInput("input", list(rows.shape), "FP32")
    data.set_data_from_numpy(rows)
    plain = client.infer("iris", [data], headers={"X-API-Key": server.key})
    for algorithm in ("gzip", "deflate"):
        packed = client.infer(
            "iris",
            [data],
            headers={"X-API-Key": server.key},
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm if algorithm == "gzip" else None,
        )
        np.testing.assert_array_equal(packed.as_numpy("predict"), plain.as_numpy("predict"))
        np.testing.assert_allclose(
            packed.as_numpy("predict_proba"), plain.as_numpy("predict_proba")
        )
    client.close()
