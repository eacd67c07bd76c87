"""A soak: `berth serve --workers 2` under 32 connections for minutes; errors and memory.

The server runs with keys, metrics, JSON logs and the prediction log on (the defaults); the load
is `berth bench` at a fixed concurrency on iris (v1), with its registered example row. The
resident memory (RSS) of every process of the server (supervisor, workers, decode
helpers) is sampled every 10 s; growth is measured from the end of the warm-up (the first
minute) to the end.

Usage: .venv/bin/python benchmarks/soak.py   (env DURATION=300 CONNECTIONS=32 WARMUP=60)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

DURATION = int(os.environ.get("DURATION", "300"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
WARMUP = int(os.environ.get("WARMUP", "60"))
BERTH = [sys.executable, "-m", "berth.cli"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tree_memory_mb(root: int) -> tuple[float, float]:
    """(RSS, PSS) of `root` and all its descendants, in MB.

    RSS counts pages shared by forked workers once per process; PSS splits them among the
    processes sharing them, so its total is what the server really holds.
    """
    pids = [root]
    rss = pss = 0
    while pids:
        pid = pids.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue
        rss += next(int(line.split()[1]) for line in rollup if line.startswith("Rss:"))
        pss += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        pids.extend(
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _parent(int(entry.name)) == pid
        )
    return rss / 1024, pss / 1024


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError):
        return -1


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env["BERTH_HOME"] = str(folder / "home")
        features, target = load_iris(return_X_y=True)
        model = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), target)
        skops.io.dump(model, folder / "iris.skops")
        np.save(folder / "sample.npy", features[:20].astype(np.float32))
        subprocess.run(
            [*BERTH, "models", "register", "iris", str(folder / "iris.skops"), "--sample",
             str(folder / "sample.npy"), "--alias", "production"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        created = subprocess.run(
            [*BERTH, "keys", "create", "soak", "--scope", "predict"],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        key = created.stdout.strip().splitlines()[-1]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = (folder / "server.log").open("wb")
        server = subprocess.Popen(
            [*BERTH, "serve", "--port", str(port), "--workers", "2"],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            samples: list[tuple[float, float, float]] = []
            done = threading.Event()

            def sample() -> None:
                started = time.monotonic()
                while not done.is_set():
                    samples.append((time.monotonic() - started, *tree_memory_mb(server.pid)))
                    done.wait(10)

            sampler = threading.Thread(target=sample)
            sampler.start()
            bench = subprocess.run(
                [*BERTH, "bench", "iris", "--server", base, "--api-key", key,
                 "--concurrency", str(CONNECTIONS), "--duration", f"{DURATION}s", "--json"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            done.set()
            sampler.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
        summary = json.loads(bench.stdout)
        errors_logged = (folder / "server.log").read_text().count('"level":"ERROR"')
    print(
        f"{DURATION} s at {CONNECTIONS} connections, 2 workers: {summary['requests']} requests, "
        f"{summary['rps']:.0f} req/s, ok {summary['ok']}, errors {summary['errors']} "
        f"{summary['status_codes']} {summary['transport_errors']}, "
        f"p50 {summary['latency_ms']['p50']:.1f} ms, p99 {summary['latency_ms']['p99']:.1f} ms; "
        f"ERROR log lines {errors_logged}"
    )
    for label, index in (("RSS", 1), ("PSS", 2)):
        series = [sample[index] for sample in samples]
        print(
            f"{label} of the server's processes (MB) every 10 s: "
            + " ".join(f"{v:.0f}" for v in series)
        )
        after = [sample[index] for sample in samples if sample[0] >= WARMUP]
        if len(after) > 1:
            growth = (after[-1] - after[0]) / after[0] * 100
            print(
                f"  after the {WARMUP} s warm-up: {after[0]:.0f} -> {after[-1]:.0f} MB ({growth:+.1f}%)"
            )


if __name__ == "__main__":
    main()
