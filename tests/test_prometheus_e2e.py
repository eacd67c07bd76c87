"""A real Prometheus scraping a real Berth server, with the rules `berth observability` writes.

Berth serves a python-flavor model that raises while a flag file exists. Prometheus (from
Debian's prometheus package) scrapes it every second and evaluates the generated rules every
second, with `--for 0s`. Queries over Berth's metrics must count exactly the predictions sent;
once the model fails, HighErrorRate must fire; a client's invalid input fires only the
HighClientErrorRate warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from berth.cli.observability import app
from tests.conftest import BERTH, berth, free_port, require_service

pytestmark = pytest.mark.server

OK_REQUESTS = 12
FLAKY_MODEL = """
from pathlib import Path


class Model:
    def load(self, path):
        self.flag = Path((Path(path) / "flag.txt").read_text().strip())

    def predict(self, inputs):
        if self.flag.exists():
            raise RuntimeError("switched off by the test's flag file")
        return inputs.sum(axis=1)
"""


def wait_for(
    check: Callable[[], Any], seconds: float, what: str, diagnose: Callable[[], str]
) -> Any:
    """Poll `check` until it returns something truthy; fail with `diagnose()` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what} within {seconds:g} s\n{diagnose()}")


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    berth_url: str
    prometheus_url: str
    key: str
    flag: Path
    logs: Path

    def diagnose(self) -> str:
        return (
            f"--- berth log\n{tail(self.logs / 'berth.log')}\n"
            f"--- prometheus log\n{tail(self.logs / 'prometheus.log')}"
        )

    def predict(self, client: httpx.Client) -> int:
        answer = client.post(
            f"{self.berth_url}/api/v1/models/flaky@production/predict",
            json={"features": [1.0, 2.0, 3.0]},
            headers={"X-API-Key": self.key},
        )
        return answer.status_code

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=5)
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus_url}/api/v1/alerts", timeout=5)
        answer.raise_for_status()
        return [a for a in answer.json()["data"]["alerts"] if a["state"] == state]


def start(command: list[str], env: dict[str, str] | None, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"{url}: the process exited early with {process.returncode}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        require_service("Prometheus", "no `prometheus` on PATH; `apt-get install prometheus`")
    assert prometheus is not None

    model = tmp_path / "flaky"
    model.mkdir()
    flag = tmp_path / "fail-now"
    (model / "model.py").write_text(FLAKY_MODEL)
    (model / "flag.txt").write_text(str(flag))
    sample = tmp_path / "sample.npy"
    np.save(sample, np.ones((2, 3), dtype=np.float32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(tmp_path / "home")
    registered = berth(
        env,
        "models",
        "register",
        "flaky",
        str(model),
        "--flavor",
        "python",
        "--sample",
        str(sample),
        "--alias",
        "production",
    )
    assert registered.returncode == 0, registered.stderr
    created = berth(env, "keys", "create", "prometheus-e2e")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]

    berth_port, prometheus_port = free_port(), free_port()
    while prometheus_port == berth_port:
        prometheus_port = free_port()
    runner = CliRunner()
    rules = runner.invoke(app, ["alerts", "--for", "0s", "--out", str(tmp_path / "rules.yml")])
    assert rules.exit_code == 0, rules.output
    config = runner.invoke(
        app,
        [
            "prometheus-config",
            "--target",
            f"127.0.0.1:{berth_port}",
            "--scrape-interval",
            "1s",
            "--evaluation-interval",
            "1s",
            "--rule-file",
            str(tmp_path / "rules.yml"),
            "--out",
            str(tmp_path / "prometheus.yml"),
        ],
    )
    assert config.exit_code == 0, config.output

    logs = tmp_path
    server = start([*BERTH, "serve", "--port", str(berth_port)], env, tmp_path / "berth.log")
    scraper: subprocess.Popen[bytes] | None = None
    found = Stack(
        berth_url=f"http://127.0.0.1:{berth_port}",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        key=key,
        flag=flag,
        logs=logs,
    )
    try:
        wait_for(
            lambda: ready(f"{found.berth_url}/ready", server), 60, "berth not ready", found.diagnose
        )
        scraper = start(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            None,
            tmp_path / "prometheus.log",
        )
        wait_for(
            lambda: ready(f"{found.prometheus_url}/-/ready", scraper),
            60,
            "prometheus not ready",
            found.diagnose,
        )
        yield found
    finally:
        if scraper is not None:
            stop(scraper)
        stop(server)


def test_prometheus_counts_predictions_and_fires_high_error_rate(stack: Stack) -> None:
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        statuses = [stack.predict(client) for _ in range(OK_REQUESTS)]
        assert statuses == [200] * OK_REQUESTS

        counted = wait_for(
            lambda: stack.value('sum(berth_predictions_total{status="ok"})') == OK_REQUESTS,
            30,
            f"Prometheus did not count {OK_REQUESTS} successful predictions",
            stack.diagnose,
        )
        assert counted
        assert (
            stack.value('sum(berth_predictions_total{model="flaky", version="1"})') == OK_REQUESTS
        )
        assert stack.value("sum(berth_prediction_duration_seconds_count)") == OK_REQUESTS
        assert stack.value('berth_model_loaded{model="flaky", version="1"}') == 1
        assert stack.value('up{job="berth"}') == 1
        assert stack.alerts() == []
        scraped_at = time.monotonic()

        stack.flag.touch()
        failed_at = time.monotonic()
        failures = 0

        def fail_once_then(alertname: str) -> dict[str, Any] | None:
            nonlocal failures
            assert stack.predict(client) == 500
            failures += 1
            firing = [a for a in stack.alerts() if a["labels"]["alertname"] == alertname]
            return firing[0] if firing else None

        alert = wait_for(
            lambda: fail_once_then("HighErrorRate"),
            60,
            "HighErrorRate did not fire",
            stack.diagnose,
        )
        fired_at = time.monotonic()
        high_error_failures = failures
        # every request fails: far over 14.4x the 0.1% budget in both the 1h and 5m windows
        wait_for(
            lambda: fail_once_then("ErrorBudgetBurnFast"),
            30,
            "ErrorBudgetBurnFast did not fire",
            stack.diagnose,
        )

    assert alert["labels"] == {
        "alertname": "HighErrorRate",
        "model": "flaky",
        "version": "1",
        "severity": "critical",
    }
    assert alert["annotations"]["summary"].startswith("flaky v1: ")
    assert float(alert["value"]) > 0.05
    names = {a["labels"]["alertname"] for a in stack.alerts()}
    assert "ModelNotLoaded" not in names
    assert "BerthTargetDown" not in names
    for expr in (
        'sum(berth_predictions_total{status="error"})',
        'sum(berth_prediction_errors_total{model="flaky", version="1", kind="internal"})',
    ):
        wait_for(
            lambda expr=expr: stack.value(expr) == failures,
            30,
            f"{expr} did not reach the {failures} failed requests sent",
            stack.diagnose,
        )
    assert stack.value('sum(berth_predictions_total{status="ok"})') == OK_REQUESTS
    print(
        f"\nscraped {OK_REQUESTS} predictions after {scraped_at - started:.1f} s; "
        f"HighErrorRate fired {fired_at - failed_at:.1f} s ({high_error_failures} failed requests) "
        f"after the model started failing; alerts firing: {sorted(names)}"
    )


def test_clients_bad_input_warns_and_never_pages(stack: Stack) -> None:
    """400s from a client breaking the signature fire the warning, never the critical page."""
    with httpx.Client(timeout=10) as client:

        def bad_input() -> int:
            answer = client.post(
                f"{stack.berth_url}/api/v1/models/flaky@production/predict",
                json={"features": [1.0, 2.0]},  # the signature has three columns
                headers={"X-API-Key": stack.key},
            )
            return answer.status_code

        assert [stack.predict(client) for _ in range(OK_REQUESTS)] == [200] * OK_REQUESTS
        sent = 0

        def refused_then_warned() -> dict[str, Any] | None:
            nonlocal sent
            assert bad_input() == 400
            sent += 1
            firing = {a["labels"]["alertname"]: a for a in stack.alerts()}
            # the two alerts share a group, a window and an evaluation: once the warning is
            # out, a page counting the same requests would be out too
            assert "HighErrorRate" not in firing, firing["HighErrorRate"]
            return firing.get("HighClientErrorRate")

        alert = wait_for(
            refused_then_warned, 60, "HighClientErrorRate did not fire", stack.diagnose
        )
        for _ in range(5):  # and a few more evaluations later, still no page
            time.sleep(1)
            refused_then_warned()
    assert alert["labels"] == {
        "alertname": "HighClientErrorRate",
        "model": "flaky",
        "version": "1",
        "severity": "warning",
    }
    names = {a["labels"]["alertname"] for a in stack.alerts()}
    assert names.isdisjoint({"HighErrorRate", "ErrorBudgetBurnFast", "ErrorBudgetBurnSlow"})
    assert stack.value('sum(berth_prediction_errors_total{kind="invalid_input"})') is not None


def test_rollout_evidence_from_prometheus_equals_the_servers_own(stack: Stack) -> None:
    """`--metrics-source http://prometheus` and the default source count the same traffic."""
    from berth.config import Settings
    from berth.registry.endpoints import EndpointService
    from berth.registry.service import Registry
    from berth.rollouts.evidence import PrometheusMetrics, ServerMetrics

    registry = Registry.from_settings(Settings(home=stack.logs / "home"))
    EndpointService(registry).create("flaky-ep", "flaky:1")

    def through_endpoint(client: httpx.Client) -> int:
        answer = client.post(
            f"{stack.berth_url}/api/v1/endpoints/flaky-ep/predict",
            json={"features": [1.0, 2.0, 3.0]},
            headers={"X-API-Key": stack.key},
        )
        return answer.status_code

    with httpx.Client(timeout=10) as client:
        wait_for(lambda: through_endpoint(client) == 200, 10, "endpoint not served", stack.diagnose)
        for _ in range(OK_REQUESTS - 1):
            assert through_endpoint(client) == 200
        stack.flag.touch()
        for _ in range(3):
            assert through_endpoint(client) == 500

    prometheus = PrometheusMetrics(stack.prometheus_url)
    server = ServerMetrics(registry.db)

    def agreed() -> bool:
        found = prometheus.totals("flaky-ep").get(("flaky", 1))
        ours = server.totals("flaky-ep").get(("flaky", 1))
        return (
            found is not None
            and ours is not None
            and (found.requests, found.errors)
            == (ours.requests, ours.errors)
            == (OK_REQUESTS + 3, 3)
            and found.latency_counts == ours.latency_counts
        )

    wait_for(agreed, 30, "the two sources did not agree on 15 requests, 3 errors", stack.diagnose)
    found = prometheus.totals("flaky-ep")[("flaky", 1)]
    assert sum(found.latency_counts) == OK_REQUESTS  # latencies of the answered requests
    assert found.latency_quantile(0.99) is not None
    registry.db.dispose()
