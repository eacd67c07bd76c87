"""How long small predictions wait while the same worker decodes large, legal request bodies.

One worker serves two models: `wide` (LogisticRegression on 256 features) and `iris`. A sender
posts `wide` batches of 10,000 rows (about 15 MB of JSON, within the default limits) back to
back; meanwhile a prober sends one-row `iris` predictions, one at a time, and records their
latency. Each configuration runs in its own server:

- `process`: the default, large bodies decoded in the helper process;
- `thread`: BERTH_DECODE_PROCESS_BYTES=0, large bodies decoded in a thread (the GIL still
  stalls the loop for the length of each C call: orjson's parse, numpy's conversions);
- `before` (with SOURCE_BEFORE=DIR, a checkout of an earlier Berth): that code as it was.

Usage: .venv/bin/python benchmarks/loop_stall.py   (env DURATION=20, SOURCE_BEFORE=DIR)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

DURATION = float(os.environ.get("DURATION", "20"))
SOURCE_BEFORE = os.environ.get("SOURCE_BEFORE")
FEATURES = 256
ROWS = 10_000


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare(folder: Path, env: dict[str, str], source: Path) -> None:
    rng = np.random.default_rng(0)
    wide_x = rng.random((2000, FEATURES)).astype(np.float32)
    wide = LogisticRegression(max_iter=200).fit(wide_x, (wide_x[:, 0] > 0.5).astype(int))
    skops.io.dump(wide, folder / "wide.skops")
    np.save(folder / "wide.npy", wide_x[:5])
    features, target = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), target)
    skops.io.dump(iris, folder / "iris.skops")
    np.save(folder / "iris.npy", features[:5].astype(np.float32))
    for name in ("wide", "iris"):
        subprocess.run(
            [sys.executable, "-m", "berth.cli", "models", "register", name,
             str(folder / f"{name}.skops"), "--sample", str(folder / f"{name}.npy"),
             "--alias", "production"],
            env={**env, "PYTHONPATH": str(source)}, cwd=source, check=True, capture_output=True,
        )  # fmt: skip


def big_body() -> bytes:
    rng = np.random.default_rng(1)
    rows = np.round(rng.random((ROWS, FEATURES)), 3).tolist()
    return orjson.dumps({"instances": rows})


def measure(env: dict[str, str], body: bytes, source: Path) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "berth.cli", "serve", "--port", str(port), "--dev"],
        env={**env, "PYTHONPATH": str(source)},
        cwd=source,  # `python -m` puts the working directory first on sys.path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                error = server.stderr.read().decode()[-3000:] if server.stderr else ""
                raise RuntimeError(f"the server did not start:\n{error}")
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        stop = threading.Event()
        big_seconds: list[float] = []

        def send_big() -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                while not stop.is_set():
                    started = time.perf_counter()
                    answer = client.post(
                        "/api/v1/models/wide/batch-predict",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    assert answer.status_code == 200, answer.text[:300]
                    big_seconds.append(time.perf_counter() - started)

        sender = threading.Thread(target=send_big)
        sender.start()
        time.sleep(2)  # the helper process (if any) is up after the first body
        small: list[float] = []
        with httpx.Client(base_url=base, timeout=30) as client:
            end = time.monotonic() + DURATION
            while time.monotonic() < end:
                started = time.perf_counter()
                answer = client.post(
                    "/api/v1/models/iris/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}
                )
                assert answer.status_code == 200, (answer.status_code, answer.text[:300])
                small.append(time.perf_counter() - started)
                time.sleep(0.005)
        stop.set()
        sender.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    small.sort()
    return {
        "small p50 ms": statistics.median(small) * 1000,
        "small p99 ms": small[int(len(small) * 0.99) - 1] * 1000,
        "small max ms": small[-1] * 1000,
        "big median s": statistics.median(big_seconds),
        "big requests": len(big_seconds),
    }


def main() -> None:
    body = big_body()
    print(f"large body: {len(body) / 1e6:.1f} MB ({ROWS} rows x {FEATURES} features)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        base_env["BERTH_PREDICTION_LOG_ENABLED"] = "false"
        base_env["BERTH_OPEN_ROUTE_RATE"] = ""  # dev mode limits every route per address
        here = Path(__file__).resolve().parents[1]
        runs = {
            "process (default)": (base_env, here),
            "thread (BERTH_DECODE_PROCESS_BYTES=0)": (
                {**base_env, "BERTH_DECODE_PROCESS_BYTES": "0"},
                here,
            ),
        }
        if SOURCE_BEFORE:
            runs["before (SOURCE_BEFORE)"] = (base_env, Path(SOURCE_BEFORE).resolve())
        results = {}
        for number, (label, (env, source)) in enumerate(runs.items()):
            # Each checkout its own registry: an older one cannot open a newer schema.
            env = {**env, "BERTH_HOME": str(folder / f"home-{number}")}
            prepare(folder, env, source)
            results[label] = measure(env, body, source)
    columns = list(next(iter(results.values())))
    print(f"{'decoding':<40}" + "".join(f"{c:>15}" for c in columns))
    for label, figures in results.items():
        print(f"{label:<40}" + "".join(f"{figures[c]:>15.1f}" for c in columns))


if __name__ == "__main__":
    main()
