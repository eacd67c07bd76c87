"""`berth demo`: the curl commands it prints work when pasted into a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Run, free_port

pytestmark = pytest.mark.server


def _read_commands(process: subprocess.Popen[str], seconds: float = 90) -> list[str]:
    assert process.stdout is not None
    commands: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        if line.startswith("curl "):
            commands.append(line.strip())
        if line.startswith("API docs:"):
            return commands
    raise AssertionError(f"demo printed no commands; got {commands}")


def test_demo_serves_and_its_curl_commands_work(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update({"BERTH_HOME": str(tmp_path / "home"), "COLUMNS": "4000"})
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "berth.cli", "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        commands = _read_commands(process)
        assert len(commands) == 5
        results = [
            subprocess.run(
                ["bash", "-c", c], capture_output=True, text=True, check=True, timeout=30
            )
            for c in commands
        ]
    finally:
        process.terminate()
        process.wait(timeout=15)
    single, batch, metadata, infer, ready = (json.loads(r.stdout) for r in results)
    assert single["model"] == "churn"
    assert single["prediction"] in (0, 1)
    assert len(batch["predictions"]) == 2
    assert metadata["name"] == "churn"
    assert {o["name"] for o in infer["outputs"]} == {"predict", "predict_proba"}
    assert ready["status"] == "ready"


def test_demo_without_serving_does_not_claim_to_serve(run: Run) -> None:
    outcome = run("demo", "--no-serve", "--port", "9123")
    assert outcome.code == 0, outcome.err
    assert "Berth is serving" not in outcome.out
    assert "Stop with Ctrl-C" not in outcome.out
    assert "churn@production is registered but not served" in outcome.out
    assert "start the server with `berth serve --port 9123`" in outcome.out
    assert "curl -s http://127.0.0.1:9123/ready" in outcome.out
