"""A 1M-row Parquet to Parquet batch job against in-process prediction with the same version.

The model is the RandomForest-100 of the peer benchmark (../shared/bench/peers/train.py: 20
float features, 5,000 training rows), registered as a Berth version. In-process throughput is
`runtime.predict` on the rows already in memory, in slices of the job's chunk size: the model's
cost alone. The job reads the Parquet file, validates every row against the signature, predicts,
and writes parts with a manifest, all of which must stay within 20% of that. Each job runs as
`berth batch run` in its own process: its rows/s are its own figure (rows over the time from
its first chunk read to its last commit); wall time adds the process start. Peak RSS is
reported for a fifth of the rows too: memory follows the chunk size, not the input's size.

Usage: .venv/bin/python benchmarks/batch_throughput.py   (env ROWS=1000000 CHUNK=50000
WORKERS=1,2 PEERS=../shared/bench/peers)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from berth.config import Settings
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.runtimes.loading import load_version

ROWS = int(os.environ.get("ROWS", "1000000"))
CHUNK = int(os.environ.get("CHUNK", "50000"))
WORKERS = [int(n) for n in os.environ.get("WORKERS", "1,2").split(",")]
PEERS = Path(os.environ.get("PEERS", Path(__file__).parents[2] / "shared/bench/peers"))


def train_rf(folder: Path) -> tuple[Path, Path]:
    """Run the peer benchmark's own training script on a copy, so its folder stays clean."""
    script = folder / "train.py"
    shutil.copy(PEERS / "train.py", script)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    return folder / "models/rf/model.joblib", folder / "models/rf_sample.npy"


def make_input(path: Path) -> np.ndarray:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    features = rng.normal(size=(ROWS, 20)).astype(np.float32)
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(20)])
    frame.insert(0, "id", np.arange(ROWS))
    frame.to_parquet(path, row_group_size=100_000)
    return features


def in_process_rate(registry: Registry, features: np.ndarray) -> float:  # type: ignore[type-arg]
    runtime = load_version(registry, registry.resolve("rf"))
    runtime.predict(features[:CHUNK])  # warm-up
    started = time.perf_counter()
    for start in range(0, ROWS, CHUNK):
        runtime.predict(features[start : start + CHUNK])
    return ROWS / (time.perf_counter() - started)


def _high_water_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_cli(env: dict[str, str], spec: list[str]) -> tuple[dict[str, object], float, float]:
    """`berth batch run` in a child process: its JSON summary, wall seconds, peak RSS in MB."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "berth.cli", "batch", "run", *spec, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    peak = 0
    # VmHWM is the process's own high-water mark (rusage would count the parent's pages too)
    while process.poll() is None:
        peak = max(peak, _high_water_kb(process.pid))
        time.sleep(0.05)
    reader.join()
    seconds = time.perf_counter() - started
    text = b"".join(output).decode()
    if process.returncode != 0:
        raise SystemExit(f"the job failed: {text}")
    summary: dict[str, object] = json.loads(text[text.index("{") :])
    return summary, seconds, peak / 1024


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        settings = Settings(home=root / "home")
        registry = Registry.from_settings(settings)
        model, sample = train_rf(root)
        register(registry, RegisterRequest(name="rf", path=model, sample=sample, trust_pickle=True))
        source = root / "input.parquet"
        features = make_input(source)
        small = root / "small.parquet"
        pd.read_parquet(source).iloc[: ROWS // 5].to_parquet(small)
        print(f"{ROWS:,} rows x 20 float32 features, RandomForest-100, chunks of {CHUNK:,}")
        baseline = in_process_rate(registry, features)
        del features
        print(f"in-process runtime.predict: {baseline:>10,.0f} rows/s")
        env = {**os.environ, "BERTH_HOME": str(root / "home")}
        runs = [(source, w) for w in WORKERS] + [(small, 1)]
        for index, (path, workers) in enumerate(runs):
            sink = root / f"scores-{index}.parquet"
            args = ["rf", "--source", str(path), "--sink", str(sink)]
            args += ["--chunk-size", str(CHUNK), "--workers", str(workers)]
            summary, seconds, peak = run_cli(env, args)
            rows = int(str(summary["rows_scored"]))
            rate = float(str(summary["rows_per_second"]))
            print(
                f"berth batch run, {rows:>9,} rows, --workers {workers}: {rate:>10,.0f} rows/s "
                f"({rate / baseline:.0%} of in-process); {seconds:.1f} s wall incl. process "
                f"start; peak RSS {peak:,.0f} MB"
            )


if __name__ == "__main__":
    main()
