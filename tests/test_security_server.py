"""Security with real processes: HTTPS, and rate limits shared by two workers through Redis."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.certificates import self_signed
from tests.conftest import BERTH, berth, free_port, require_service

pytestmark = pytest.mark.server

REDIS_URL = os.environ.get("BERTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """A registry with iris (skops) at production, and the environment to reach it."""
    folder = tmp_path_factory.mktemp("secure")
    features, target = load_iris(return_X_y=True)
    skops.io.dump(LogisticRegression(max_iter=1000).fit(features, target), folder / "iris.skops")
    np.save(folder / "sample.npy", features[:5])
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(folder / "home")
    done = berth(
        env,
        "models",
        "register",
        "iris",
        str(folder / "iris.skops"),
        "--sample",
        str(folder / "sample.npy"),
        "--alias",
        "production",
    )
    assert done.returncode == 0, done.stderr
    return env, folder


def _key(env: dict[str, str], name: str, *options: str) -> str:
    created = berth(env, "keys", "create", name, *options)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


def _serve(
    env: dict[str, str], *args: str, scheme: str = "http", verify: object = True
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [*BERTH, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode() if process.stderr else "exited")
        try:
            if httpx.get(f"{base}/ready", verify=verify, timeout=1).status_code == 200:  # type: ignore[arg-type]
                return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    _, stderr = process.communicate(timeout=15)
    return stderr.decode()


def test_https_with_tls_cert_and_key(home: tuple[dict[str, str], Path]) -> None:
    env, folder = home
    cert, key = self_signed(folder)
    secret = _key(env, "tls-client")
    trust = ssl.create_default_context(cafile=str(cert))
    process, base = _serve(
        env, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https", verify=trust
    )
    try:
        answer = httpx.post(
            f"{base}/api/v1/models/iris/predict",
            json={"features": ROW},
            headers={"X-API-Key": secret},
            verify=trust,
        )
        assert answer.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(base.replace("https", "http") + "/health", timeout=2)
    finally:
        logs = _stop(process)
    assert secret not in logs


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_service("Redis", str(exc))
    return client


def _hits(base: str, secret: str, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        # A new connection per request, so both worker processes take requests.
        with httpx.Client(base_url=base) as client:
            statuses.append(
                client.get("/api/v1/models/iris", headers={"X-API-Key": secret}).status_code
            )
    return statuses


def test_rate_limit_holds_in_total_across_two_workers_via_redis(
    home: tuple[dict[str, str], Path],
) -> None:
    env, _folder = home
    client = _redis_or_skip()
    for stale in client.scan_iter("berth:rl:key:shared*"):
        client.delete(stale)
    secret = _key(env, f"shared-{time.time_ns()}", "--rate", "20/h")
    process, base = _serve({**env, "BERTH_REDIS_URL": REDIS_URL}, "--workers", "2")
    try:
        statuses = _hits(base, secret, 40)
    finally:
        _stop(process)
    assert statuses.count(200) == 20
    assert statuses.count(429) == 20


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    binary = shutil.which("redis-server")
    if binary is None:
        require_service("redis-server binary", "not on PATH")
    port = free_port()
    process = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    yield url, process
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize(("fail_open", "expected"), [("true", 200), ("false", 503)])
def test_redis_stopped_mid_test_behaves_as_configured(
    home: tuple[dict[str, str], Path],
    private_redis: tuple[str, subprocess.Popen[bytes]],
    fail_open: str,
    expected: int,
) -> None:
    env, _folder = home
    url, redis_process = private_redis
    secret = _key(env, f"outage-{fail_open}-{time.time_ns()}", "--rate", "3/h")
    process, base = _serve({**env, "BERTH_REDIS_URL": url, "BERTH_RATE_LIMIT_FAIL_OPEN": fail_open})
    try:
        assert _hits(base, secret, 4) == [200, 200, 200, 429]
        redis_process.send_signal(signal.SIGKILL)
        redis_process.wait()
        after = _hits(base, secret, 3)
    finally:
        logs = _stop(process)
    assert after == [expected] * 3
    if fail_open == "true":
        assert "Redis" in logs


@pytest.mark.parametrize(
    ("proxies", "path", "expected"),
    [
        ('["127.0.0.1"]', "/api/v1/models", "203.0.113.9"),
        ("[]", "/api/v1/endpoints", "127.0.0.1"),
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    home: tuple[dict[str, str], Path], proxies: str, path: str, expected: str
) -> None:
    """Each case refuses a different route, so its audit event is found by its target whatever
    else the module's registry recorded."""
    env, _folder = home
    process, base = _serve({**env, "BERTH_TRUSTED_PROXIES": proxies})
    try:
        refused = httpx.get(
            f"{base}{path}", headers={"X-Forwarded-For": "203.0.113.9", "X-API-Key": "nope"}
        )
        assert refused.status_code == 401
    finally:
        logs = _stop(process)  # stopping flushes the audit queue
    listed = berth(env, "audit", "list", "--json", "--limit", "50")
    assert listed.returncode == 0, listed.stderr
    events = [
        e
        for e in json.loads(listed.stdout)
        if e["action"] == "auth.failure" and e["target"] == f"GET {path}"
    ]
    assert events, f"no auth.failure for GET {path} was recorded; the server said:\n{logs}"
    assert events[0]["address"] == expected
