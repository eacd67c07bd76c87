"""`berth serve` on first contact: arguments checked and the port bound before any model loads,
and a server started without references serving models given a production alias later."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from berth.api.app import build_services, create_app
from berth.config import Settings
from berth.registry.service import Registry
from tests.conftest import (
    BERTH,
    Run,
    berth,
    create_key,
    free_port,
    iris_home,
    register_churn,
    register_iris,
    serving,
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port must be between 1 and 65535, got 99999"),
        (["--port", "0"], "--port must be between 1 and 65535, got 0"),
        (["--workers", "-3"], "--workers must be between 1 and 1024, got -3"),
        (["--workers", "0"], "--workers must be between 1 and 1024, got 0"),
        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid is not an address"),
    ],
)
def test_bad_arguments_are_one_line(run: Run, args: list[str], message: str) -> None:
    outcome = run("serve", *args)
    assert outcome.code == 1
    assert message in outcome.err
    assert len(outcome.err.strip().splitlines()) == 1, outcome.err
    assert "Traceback" not in outcome.err


def test_a_port_in_use_is_reported_before_models_load(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    env = iris_home(tmp_path / "home", iris_files)
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [*BERTH, "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr
    assert "--port" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "loaded" not in done.stdout + done.stderr  # refused before any model loaded


def test_without_references_a_model_given_production_later_is_served(
    settings: Settings, iris_files: tuple[Path, Path], churn_files: tuple[Path, Path, Path]
) -> None:
    settings = settings.model_copy(update={"refresh_seconds": 0.2})
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app) as client:
        services = app.state.services
        assert services.dataplane.served_names == ["iris"]
        register_churn(registry, churn_files, aliases=("production",))
        deadline = time.monotonic() + 20
        while "churn" not in services.dataplane.served_names and time.monotonic() < deadline:
            time.sleep(0.1)
        assert services.dataplane.served_names == ["iris", "churn"]
        assert client.portal.call(services.dataplane.version, "churn").number == 1  # type: ignore[union-attr]
    registry.db.dispose()


def test_with_references_only_those_are_served(
    settings: Settings, iris_files: tuple[Path, Path], churn_files: tuple[Path, Path, Path]
) -> None:
    settings = settings.model_copy(update={"refresh_seconds": 0.2, "served": ["iris@production"]})
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app):
        register_churn(registry, churn_files, aliases=("production",))
        time.sleep(1.0)  # five refreshes
        assert app.state.services.dataplane.served_names == ["iris"]
    registry.db.dispose()


def test_an_empty_registry_is_served_with_allow_empty_and_models_arrive_through_the_api(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    """A registry server for remote `berth` and CI starts before its first model: the first
    version is uploaded and aliased through the API, then predicted with, without a restart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(BERTH_HOME=str(tmp_path / "home"), BERTH_REFRESH_SECONDS="0.2")
    refused = berth(env, "serve", "--port", str(free_port()))
    assert refused.returncode == 1
    assert "--allow-empty" in refused.stderr
    key = create_key(env, "ci", "--scope", "admin")
    model, sample = iris_files
    headers = {"X-API-Key": key}
    with serving(env, "--allow-empty") as (url, _port):
        with model.open("rb") as artifact, sample.open("rb") as rows:
            uploaded = httpx.post(
                f"{url}/api/v1/models/iris/versions",
                headers=headers,
                files={"artifact": (model.name, artifact), "sample": (sample.name, rows)},
                data={
                    "metadata": json.dumps(
                        {
                            "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                            "trust_pickle": True,
                        }
                    )
                },
                timeout=60,
            )
        assert uploaded.status_code == 201, uploaded.text
        aliased = httpx.put(
            f"{url}/api/v1/models/iris/aliases/production", headers=headers, json={"version": 1}
        )
        assert aliased.status_code == 200, aliased.text
        deadline = time.monotonic() + 20
        while True:
            answer = httpx.post(
                f"{url}/api/v1/models/iris/predict",
                headers=headers,
                json={"features": np.load(sample)[0].tolist()},
            )
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Berth-Model-Version"] == "iris:1"
