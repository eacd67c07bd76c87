"""`berth serve --engine ray` on a real local Ray cluster that the test starts.

Ray is started once for the module (`ray start --head --block`, its own temp folder and free
ports), Berth is deployed to it with two replicas, and a built-in `berth serve` runs next to it
on the same registry, so the two can be compared answer for answer: the same API, the same
authentication and the same metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.config import Settings
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.conftest import BERTH, Run, register_iris, require_service, serving
from tests.ports import free_port

pytestmark = pytest.mark.server

RAY = Path(sys.executable).with_name("ray")
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@dataclass(frozen=True)
class RayCluster:
    address: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A one-node Ray cluster on free ports, stopped (every process of it) afterwards."""
    if not RAY.exists():
        require_service("Ray Serve", "the ray command is missing: pip install 'berth[ray]'")
    # Ray's unix sockets live under the temp folder, whose path must stay short (108 bytes).
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "RAY_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    gcs = free_port()
    ports = {
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    log = open(Path(temp) / "ray-start.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--port",
            str(gcs),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            temp,
            "--object-store-memory",
            str(100 * 1024 * 1024),
            *[str(part) for pair in ports.items() for part in pair],
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_log(Path(temp) / "ray-start.log", "Ray runtime started", process, 60)
        yield RayCluster(address=f"127.0.0.1:{gcs}", env=env)
    finally:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started ...
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # ... but with Serve's actors running it takes 30 s
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        _kill_processes_mentioning(temp)  # workers Ray started in sessions of their own
        log.close()
        print(f"ray stopped in {time.monotonic() - started:.1f} s")
        shutil.rmtree(temp, ignore_errors=True)


def _kill_processes_mentioning(text: str) -> None:
    """SIGKILL every process whose command line names `text` (this cluster's temp folder)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def _wait_for_log(path: Path, text: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} after {seconds} s: {path.read_text()[-3000:]}")


@dataclass(frozen=True)
class Deployed:
    ray: str  # base URL of Ray Serve's proxy
    builtin: str  # base URL of a `berth serve` on the same registry
    key: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def deployed(
    ray_cluster: RayCluster,
    tmp_path_factory: pytest.TempPathFactory,
    iris_files: tuple[Path, Path],
) -> Iterator[Deployed]:
    folder = tmp_path_factory.mktemp("ray-engine")
    settings = Settings(home=folder / "home")
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    _, key = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings))).create(
        "client", ("predict",)
    )
    registry.db.dispose()
    env = dict(ray_cluster.env)
    env.update(
        {
            "BERTH_HOME": str(folder / "home"),
            "BERTH_RAY_MIN_REPLICAS": "2",
            "BERTH_RAY_MAX_REPLICAS": "3",
            "BERTH_RAY_TARGET_ONGOING_REQUESTS": "4",
            "BERTH_RAY_REPLICA_CPUS": "0.5",
        }
    )
    port = free_port()
    log = folder / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *BERTH,
                "serve",
                "--engine",
                "ray",
                "--address",
                ray_cluster.address,
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_log(log, "Serving iris@production", process, 120)
        with serving(env) as (builtin, _):
            yield Deployed(f"http://127.0.0.1:{port}", builtin, key, process, log, env)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in body.items()
        if name not in ("prediction_id", "prediction_ids", "id")
    }


def test_same_answers_as_the_builtin_server_on_v1_and_v2(deployed: Deployed) -> None:
    headers = {"X-API-Key": deployed.key}
    v1 = {"instances": ROWS}
    v2 = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]}
    for path, body in (("/api/v1/models/iris/batch-predict", v1), ("/v2/models/iris/infer", v2)):
        on_ray = httpx.post(deployed.ray + path, json=body, headers=headers, timeout=30)
        builtin = httpx.post(deployed.builtin + path, json=body, headers=headers, timeout=30)
        assert on_ray.status_code == builtin.status_code == 200, on_ray.text
        assert _without_ids(on_ray.json()) == _without_ids(builtin.json())
    ready = httpx.get(deployed.ray + "/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["models"] == ["iris:1"]


def test_same_authentication_and_errors(deployed: Deployed) -> None:
    path = "/api/v1/models/iris/predict"
    body = {"features": ROWS[0]}
    for headers, status in (({}, 401), ({"X-API-Key": "berth_nope_nope"}, 401)):
        on_ray = httpx.post(deployed.ray + path, json=body, headers=headers, timeout=30)
        builtin = httpx.post(deployed.builtin + path, json=body, headers=headers, timeout=30)
        assert on_ray.status_code == builtin.status_code == status
        assert on_ray.json() == builtin.json()
    bad = {"features": [1.0, 2.0]}
    headers = {"X-API-Key": deployed.key}
    on_ray = httpx.post(deployed.ray + path, json=bad, headers=headers, timeout=30)
    builtin = httpx.post(deployed.builtin + path, json=bad, headers=headers, timeout=30)
    assert on_ray.status_code == builtin.status_code == 400
    assert on_ray.json() == builtin.json()
    assert "expected 4 values" in on_ray.text


def test_metrics_count_every_replica_and_match_the_builtin_families(deployed: Deployed) -> None:
    headers = {"X-API-Key": deployed.key}

    def counted(base: str) -> float:
        text = httpx.get(base + "/metrics", timeout=10).text
        found = re.findall(
            r'^berth_predictions_total\{[^}]*model="iris"[^}]*status="ok"[^}]*\} (\S+)$', text, re.M
        )
        return sum(float(value) for value in found)

    before = counted(deployed.ray)
    for _ in range(20):  # spread over both replicas by Ray's router
        response = httpx.post(
            deployed.ray + "/api/v1/models/iris/predict",
            json={"features": ROWS[1]},
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 200
    # Whichever replica answers /metrics, it reports the sum over both.
    assert [counted(deployed.ray) - before for _ in range(4)] == [20.0] * 4
    httpx.post(
        deployed.builtin + "/api/v1/models/iris/predict",
        json={"features": ROWS[1]},
        headers=headers,
        timeout=30,
    )
    families = [
        {
            line.split()[2].removesuffix("_total")
            for line in httpx.get(base + "/metrics", timeout=10).text.splitlines()
            if line.startswith("# TYPE berth_")
        }
        for base in (deployed.ray, deployed.builtin)
    ]
    # Replicas share their metrics through files, where (as with `berth serve --workers N`) a
    # family appears once it has a sample; each one shown is one the built-in server has.
    assert families[0] <= families[1], families[0] - families[1]
    assert {"berth_predictions", "berth_prediction_duration_seconds"} <= families[0]


def test_replicas_and_autoscaling_follow_berths_settings(
    deployed: Deployed, ray_cluster: RayCluster
) -> None:
    """Asked of Ray itself: two replicas running, autoscaling 2..3 at 4 requests in flight."""
    script = (
        "import json, ray\n"
        "from ray.serve.context import _get_global_client\n"
        "from ray import serve\n"
        f"ray.init(address={ray_cluster.address!r}, logging_level='ERROR')\n"
        "status = serve.status().applications['berth']\n"
        "deployment = status.deployments['Berth']\n"
        "details = _get_global_client().get_serve_details()\n"
        "config = details['applications']['berth']['deployments']['Berth']['deployment_config']\n"
        "print(json.dumps({'status': str(status.status), 'replicas': deployment.replica_states,"
        " 'autoscaling': config['autoscaling_config'],"
        " 'max_ongoing': config['max_ongoing_requests'],"
        " 'actor': config.get('ray_actor_options', {})}))\n"
    )
    asked = subprocess.run(
        [sys.executable, "-c", script],
        env=ray_cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert asked.returncode == 0, asked.stderr[-3000:]
    found = json.loads(asked.stdout.strip().splitlines()[-1])
    assert found["status"].endswith("RUNNING")
    assert found["replicas"].get("RUNNING") == 2
    autoscaling = found["autoscaling"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (2, 3)
    assert autoscaling["target_ongoing_requests"] == 4
    assert found["max_ongoing"] == 64  # BERTH_MAX_CONCURRENT_REQUESTS
    assert found["actor"]["num_cpus"] == 0.5


def test_sigterm_removes_the_application_and_exits_0(deployed: Deployed) -> None:
    """Runs last in the module: the deployment is gone afterwards."""
    deployed.process.send_signal(signal.SIGTERM)
    assert deployed.process.wait(timeout=60) == 0
    text = deployed.log.read_text(errors="replace")
    assert "Stopping: removing the application" in text
    gone = httpx.get(deployed.ray + "/health", timeout=10)
    assert gone.status_code == 404  # the proxy is still up; Berth is not behind it any more


def test_bad_engine_options_are_refused_with_what_to_do(
    run: Run,
    settings: Settings,
    iris_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    registry.db.dispose()
    cases = [
        (["--engine", "ray", "--workers", "2"], "not --workers"),
        (["--engine", "ray", "--detach"], "--detach needs a Ray cluster"),
        (["--address", "127.0.0.1:1"], "apply to --engine ray only"),
    ]
    for args, message in cases:
        outcome = run("serve", "--dev", *args)
        assert outcome.code != 0
        assert message in outcome.out + outcome.err
    monkeypatch.setenv("BERTH_RAY_MIN_REPLICAS", "3")
    monkeypatch.setenv("BERTH_RAY_MAX_REPLICAS", "2")
    outcome = run("serve", "--dev", "--engine", "ray")
    assert outcome.code != 0
    assert "raise BERTH_RAY_MAX_REPLICAS" in " ".join((outcome.out + outcome.err).split())
