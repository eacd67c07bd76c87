"""How long `berth serve --workers 2` takes to replace a worker killed with SIGKILL.

Each round starts a fresh two-worker server on the iris model, waits until both workers are
up, kills one with SIGKILL, and times until its replacement logs "Application startup
complete" (that includes uvicorn noticing the death: it checks every 0.5 s). It does this with
workers forked from the preloaded server (the default) and with BERTH_WORKER_PRELOAD=false
(each worker a fresh interpreter that imports everything, as before), rounds alternating.

Usage: .venv/bin/python benchmarks/worker_restart.py   (env ROUNDS=5)
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

ROUNDS = int(os.environ.get("ROUNDS", "5"))
BERTH = [sys.executable, "-m", "berth.cli"]
_STARTED = re.compile(r"Started server process \[(\d+)\]")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare(folder: Path) -> dict[str, str]:
    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), target)
    skops.io.dump(model, folder / "iris.skops")
    np.save(folder / "sample.npy", features[:20].astype(np.float32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(folder / "home")
    subprocess.run(
        [*BERTH, "models", "register", "iris", str(folder / "iris.skops"), "--sample",
         str(folder / "sample.npy"), "--alias", "production"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return env


def wait_for(condition: object, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


def one_round(env: dict[str, str], folder: Path, preload: bool) -> tuple[float, float]:
    """(seconds until both workers are up, seconds to replace a killed one)."""
    log = folder / f"server-{time.monotonic_ns()}.log"
    port = free_port()
    env = {**env, "BERTH_WORKER_PRELOAD": "true" if preload else "false"}
    started = time.monotonic()
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*BERTH, "serve", "--port", str(port), "--workers", "2", "--dev"],
            env=env, stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        wait_for(lambda: log.read_text().count("Application startup complete") >= 2)
        boot = time.monotonic() - started
        victim = int(_STARTED.findall(log.read_text())[0])
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: log.read_text().count("Application startup complete") >= 3)
        restart = time.monotonic() - killed
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}
        )
        assert answer.status_code == 200
        return boot, restart
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = prepare(folder)
        figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(ROUNDS):
            for preload in (True, False):
                figures[preload].append(one_round(env, folder, preload))
    print(f"{ROUNDS} rounds, two workers, iris (skops); seconds, median (min-max)")
    print(f"{'workers':<40} {'both up after start':>22} {'killed worker replaced':>24}")
    for preload, label in (
        (False, "spawned (BERTH_WORKER_PRELOAD=false)"),
        (True, "forked from the preloaded server"),
    ):
        boots = [b for b, _ in figures[preload]]
        restarts = [r for _, r in figures[preload]]
        print(f"{label:<40} {_stat(boots):>22} {_stat(restarts):>24}")


def _stat(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
