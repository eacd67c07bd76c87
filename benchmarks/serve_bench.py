"""Berth under wrk with the peer benchmark's two models, as `make bench` runs it.

The models are those of the peer benchmark (../shared/bench/peers/train.py, retrained here with
the same data and seeds): iris LogisticRegression and a RandomForest-100 on 20 features. Each
configuration starts `berth serve` with 2 workers, API keys on, metrics on, JSON logs at INFO and
the access log off; measures the time from start to the first served prediction and the idle
RSS of the whole process tree; then runs wrk at 1, 16 and 64 connections, one row per request,
on v1 and on OIP v2. Results: a table on stdout and JSON under benchmarks/results/.

Usage: .venv/bin/python benchmarks/serve_bench.py [config-substring ...]
Env: DUR=10 (seconds per wrk run), CONNS=1,16,64, PROTOCOLS=v1,v2
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BERTH = str(BIN / "berth")
DUR = int(os.environ.get("DUR", "10"))
CONNS = [int(c) for c in os.environ.get("CONNS", "1,16,64").split(",")]
PROTOCOLS = os.environ.get("PROTOCOLS", "v1,v2").split(",")
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass
class Config:
    name: str
    models: dict[str, str]
    """model name in Berth -> alias served."""
    env: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    """Which models get wrk runs (default all; `const` is GET /health)."""


def train(work: Path) -> dict[str, Path]:
    """The peer benchmark's models, same data and seeds."""
    from sklearn.datasets import load_iris, make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=1000).fit(x.astype(np.float32), y)
    x2, y2 = make_classification(n_samples=5000, n_features=20, random_state=0)
    rf = RandomForestClassifier(n_estimators=100, random_state=0).fit(x2.astype(np.float32), y2)
    joblib.dump(iris, work / "iris.joblib")
    joblib.dump(rf, work / "rf.joblib")
    np.save(work / "iris_sample.npy", x[:64].astype(np.float32))
    np.save(work / "rf_sample.npy", x2[:64].astype(np.float32))
    # What `berth models optimize --data` checks the ONNX versions on.
    np.save(work / "iris_check.npy", x.astype(np.float32))
    np.save(work / "rf_check.npy", x2[:2000].astype(np.float32))
    return {"iris": work / "iris.joblib", "rf": work / "rf.joblib"}


def berth(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [BERTH, *args], env=env, capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"berth {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def prepare(work: Path) -> tuple[dict[str, str], str, dict[str, list[float]], bool]:
    env = {**os.environ, "BERTH_HOME": str(work / "home")}
    files = train(work)
    for name, path in files.items():
        berth(
            env,
            "models", "register", name, str(path), "--trust-pickle",
            "--sample", str(work / f"{name}_sample.npy"), "--alias", "sklearn",
        )  # fmt: skip
    optimized = optimize(env, work)
    key = berth(env, "keys", "create", "bench", "--scope", "predict", "--scope", "read")
    rows = {
        "iris": IRIS_ROW,
        "rf": [round(float(v), 4) for v in np.load(work / "rf_sample.npy")[0]],
    }
    if optimized:
        print("ONNX versions registered by `berth models optimize` (alias onnx)")
    return env, key.strip().splitlines()[-1], rows, optimized


def optimize(env: dict[str, str], work: Path) -> bool:
    """ONNX versions of both models through `berth models optimize`, when it is available."""
    for name in ("iris", "rf"):
        done = subprocess.run(
            [BERTH, "models", "optimize", f"{name}@sklearn", "--alias", "onnx",
             "--data", str(work / f"{name}_check.npy")],
            env=env, capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            print(f"(no ONNX version of {name}: {done.stderr.strip()[-300:]})")
            return False
        print(done.stdout.strip()[-1200:])
    return True


CONFIGS = [
    Config("berth-const", {"iris": "sklearn"}, {"BERTH_OPEN_ROUTE_RATE": ""}, ["const"]),
    Config("berth-sklearn", {"iris": "sklearn", "rf": "sklearn"}),
    Config(
        "berth-sklearn-rf-batch32/5ms",
        {"iris": "sklearn", "rf": "sklearn"},
        {"BERTH_MODELS": json.dumps({"rf": {"max_batch_size": 32, "max_latency_ms": 5}})},
        ["rf"],
    ),
    Config("berth-onnx", {"iris": "onnx", "rf": "onnx"}),
    Config(
        "berth-onnx-rf-batch32/5ms",
        {"iris": "onnx", "rf": "onnx"},
        {"BERTH_MODELS": json.dumps({"rf": {"max_batch_size": 32, "max_latency_ms": 5}})},
        ["rf"],
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(url: str, body: bytes | None, key: str) -> int:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST" if body else "GET",
        headers={"Content-Type": "application/json", "X-API-Key": key},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def bodies(model: str, row: list[float]) -> dict[str, tuple[str, str]]:
    """protocol -> (path, JSON body), one row per request; `model` is a reference (iris@onnx)."""
    v2 = {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    return {
        "v1": (f"/api/v1/models/{model}/predict", json.dumps({"features": row})),
        "v2": (f"/v2/models/{model}/infer", json.dumps(v2)),
    }


def tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            children = []
        stack.extend(int(c) for c in children)
    return found


def rss_mb(pids: list[int]) -> float:
    """Resident memory summed over `pids`: a page shared by several counts in each."""
    return _summed_mb(pids, "status", "VmRSS:")


def pss_mb(pids: list[int]) -> float:
    """Proportional memory summed over `pids`: a page shared by n processes counts 1/n in each."""
    return _summed_mb(pids, "smaps_rollup", "Pss:")


def _summed_mb(pids: list[int], file: str, field: str) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]
    return round(float(value) * scale, 3)


def wrk(url: str, body: str | None, key: str, conns: int, seconds: int = DUR) -> dict[str, Any]:
    lines = [f'wrk.method = "POST"\nwrk.body = [==[{body}]==]'] if body is not None else []
    lines += [
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["X-API-Key"] = "{key}"',
    ]
    script = Path(tempfile.mkdtemp()) / "request.lua"
    script.write_text("\n".join(lines) + "\n")
    threads = 1 if conns == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s",
         "-s", str(script), url],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    shutil.rmtree(script.parent)
    result: dict[str, Any] = {"conns": conns}
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(found.group(1)) if found else 0.0
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = to_ms(found.group(1)) if found else None
    errors = 0
    found = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors += int(found.group(1)) if found else 0
    found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(g) for g in found.groups()) if found else 0
    result["errors"] = errors
    return result


def run_config(
    config: Config, env: dict[str, str], key: str, rows: dict[str, list[float]]
) -> list[dict[str, Any]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    served = [f"{m}@{alias}" for m, alias in config.models.items()]
    server_env = {
        **env,
        "BERTH_LOG_FORMAT": "json",
        "BERTH_LOG_LEVEL": "INFO",
        "BERTH_ACCESS_LOG": "false",
        **config.env,
    }
    log = (HERE / "results" / f"{config.name.replace('/', '_')}.log").open("w")
    started = time.perf_counter()
    process = subprocess.Popen(
        [BERTH, "serve", *served, "--port", str(port), "--workers", "2"],
        env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    first = next(iter(config.models))
    path, body = bodies(f"{first}@{config.models[first]}", rows[first])["v1"]
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{config.name}: server exited; see {log.name}")
            try:
                if request(base + path, body.encode(), key) == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - started > 120:
                raise SystemExit(f"{config.name}: no prediction within 120 s; see {log.name}")
            time.sleep(0.02)
        first_prediction = round(time.perf_counter() - started, 2)
        time.sleep(3)
        idle = rss_mb(tree(process.pid))
        print(f"[{config.name}] first prediction after {first_prediction} s, idle RSS {idle} MB")
        results = []
        for model in config.targets or list(config.models):
            plans = (
                {"GET": ("/health", None)}
                if model == "const"
                else {
                    p: b
                    for p, b in bodies(f"{model}@{config.models[model]}", rows[model]).items()
                    if p in PROTOCOLS
                }
            )
            for protocol, (route, payload) in plans.items():
                wrk(base + route, payload, key, 16, seconds=3)  # warm-up
                for conns in CONNS:
                    found = wrk(base + route, payload, key, conns)
                    found.update(
                        config=config.name,
                        model=model if model == "const" else f"{model}@{config.models[model]}",
                        protocol=protocol,
                        first_prediction_s=first_prediction,
                        idle_rss_mb=idle,
                    )
                    results.append(found)
                    print(
                        f"[{config.name}] {found['model']:14s} {protocol} c={conns:<3d} "
                        f"{found['rps']:9.1f} req/s  p50 {found['p50_ms']} ms  "
                        f"p99 {found['p99_ms']} ms  errors {found['errors']}",
                        flush=True,
                    )
        return results
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass  # it had exited already
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def inprocess(work: Path, rows: dict[str, list[float]]) -> dict[str, float]:
    """Microseconds per model.predict of one row, the floor under any server's latency."""
    found = {}
    for name in ("iris", "rf"):
        model = joblib.load(work / f"{name}.joblib")
        row = np.asarray([rows[name]], dtype=np.float32)
        for _ in range(50):
            model.predict(row)
        rounds = 2000 if name == "iris" else 200
        started = time.perf_counter()
        for _ in range(rounds):
            model.predict(row)
        found[name] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    return found


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does this)")
    wanted = sys.argv[1:]
    (HERE / "results").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    try:
        env, key, rows, onnx = prepare(work)
        floor = inprocess(work, rows)
        print(f"in-process model.predict, 1 row: {floor} us")
        results: list[dict[str, Any]] = []
        for config in CONFIGS:
            if wanted and not any(w in config.name for w in wanted):
                continue
            if "onnx" in config.models.values() and not onnx:
                continue
            results.extend(run_config(config, env, key, rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"serve-{stamp}.json"
    out.write_text(json.dumps({"inprocess_us": floor, "runs": results}, indent=1))
    print(
        "\n| config | model | protocol | conns | req/s | p50 ms | p99 ms | errors | first prediction s | idle RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['config']} | {r['model']} | {r['protocol']} | {r['conns']} | {r['rps']:.0f} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['first_prediction_s']} | "
            f"{r['idle_rss_mb']} |"
        )
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
