"""The real thing: `berth` CLI subprocesses and a uvicorn server on a free port, over HTTP."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import BERTH, berth, free_port, serving, wait_ready

pytestmark = pytest.mark.server


@dataclass(frozen=True)
class Server:
    base: str
    port: int
    key: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, iris_files: tuple[Path, Path]
) -> Iterator[Server]:
    """One server for the module; tests that change state say so in their names and run last."""
    tmp_path = tmp_path_factory.mktemp("server")
    model, sample = iris_files
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(tmp_path / "home")  # default refresh: revocations within 2 s
    registered = berth(
        env,
        "models",
        "register",
        "iris",
        str(model),
        "--sample",
        str(sample),
        "--alias",
        "production",
        "--metric",
        "accuracy=0.97",
        "--trust-pickle",
    )
    assert registered.returncode == 0, registered.stderr
    created = berth(env, "keys", "create", "client")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    with serving(env) as (base, port):
        yield Server(base=base, port=port, key=key, env=env)


def test_standard_oip_client_with_defaults(server: Server, iris_files: tuple[Path, Path]) -> None:
    """tritonclient's HTTP client, unchanged: binary inputs and binary outputs by default."""
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    headers = {"X-API-Key": server.key}
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "berth"
    metadata = client.get_model_metadata("iris", headers=headers)
    assert metadata["inputs"][0]["datatype"] == "FP32"
    assert client.is_model_ready("iris", headers=headers)
    rows = np.load(iris_files[1])[:5]
    data = triton.InferInput("input", list(rows.shape), "FP32")
    data.set_data_from_numpy(rows)
    result = client.infer("iris", [data], headers=headers)
    expected = joblib.load(iris_files[0])
    np.testing.assert_array_equal(result.as_numpy("predict"), expected.predict(rows))
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), expected.predict_proba(rows), rtol=1e-6
    )
    versioned = client.infer(
        "iris",
        [data],
        model_version="1",
        headers=headers,
        outputs=[triton.InferRequestedOutput("predict", binary_data=False)],
    )
    np.testing.assert_array_equal(versioned.as_numpy("predict"), expected.predict(rows))
    client.close()


def test_oip_client_sees_errors(server: Server) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    data = triton.InferInput("input", [1, 3], "FP32")
    data.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException, match="expected 4 values per row"):
        client.infer("iris", [data], headers={"X-API-Key": server.key})
    with pytest.raises(triton.InferenceServerException, match="API key"):
        client.infer("iris", [data])
    client.close()


def test_v1_over_http_and_alias_move_reaches_the_running_server(
    server: Server, iris_files: tuple[Path, Path]
) -> None:
    headers = {"X-API-Key": server.key}
    url = f"{server.base}/api/v1/models/iris@production/predict"
    first = httpx.post(url, json={"features": [5.1, 3.5, 1.4, 0.2]}, headers=headers)
    assert first.status_code == 200
    assert first.json()["model_version"] == 1
    model, sample = iris_files
    assert (
        berth(
            server.env,
            "models",
            "register",
            "iris",
            str(model),
            "--sample",
            str(sample),
            "--trust-pickle",
        ).returncode
        == 0
    )
    assert berth(server.env, "models", "alias", "iris", "production", "2").returncode == 0
    deadline = time.monotonic() + 10
    version = 1
    while version != 2 and time.monotonic() < deadline:
        version = httpx.post(url, json={"features": [5.1, 3.5, 1.4, 0.2]}, headers=headers).json()[
            "model_version"
        ]
        time.sleep(0.1)
    assert version == 2


def test_revoked_key_is_refused_within_two_seconds(server: Server) -> None:
    created = berth(server.env, "keys", "create", "short-lived", "--scope", "read")
    headers = {"X-API-Key": created.stdout.strip().splitlines()[-1]}
    url = f"{server.base}/api/v1/models"
    assert httpx.get(url, headers=headers).status_code == 200
    assert berth(server.env, "keys", "revoke", "short-lived").returncode == 0
    revoked_at = time.monotonic()
    status = 200
    while status == 200 and time.monotonic() - revoked_at < 5:
        status = httpx.get(url, headers=headers).status_code
        time.sleep(0.05)
    assert status == 401
    assert time.monotonic() - revoked_at < 2.0


def test_dev_mode_with_two_workers(tmp_path: Path, iris_files: tuple[Path, Path]) -> None:
    model, sample = iris_files
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(tmp_path / "home")
    assert (
        berth(
            env,
            "models",
            "register",
            "iris",
            str(model),
            "--sample",
            str(sample),
            "--alias",
            "production",
            "--trust-pickle",
        ).returncode
        == 0
    )
    port = free_port()
    process = subprocess.Popen(
        [*BERTH, "serve", "--port", str(port), "--workers", "2", "--dev"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        with httpx.Client(base_url=base) as client:
            answers = [
                client.post("/api/v1/predict", json={"features": [5.1, 3.5, 1.4, 0.2]})
                for _ in range(20)
            ]
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["prediction"] for a in answers} == {0}
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    assert b"DEV MODE" in stderr
