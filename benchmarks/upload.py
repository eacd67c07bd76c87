"""Registering a large model by upload: throughput and the server's memory while it arrives.

An ONNX model holding SIZE_MB of weights (one float32 MatMul, so the smoke prediction uses them)
is registered with `berth models register` in remote mode against `berth serve` (one worker,
SQLite, a temporary BERTH_HOME), as a CI runner would: BERTH_SERVER and BERTH_API_KEY only,
no database URL. The server's resident memory (every process of it) is sampled every 20 ms
while the command runs. Printed: seconds, MB/s over the whole command (hashing on the client,
the upload, the server's checks and storing) and the server's peak RSS over its idle RSS; and
the same for the transfer alone (an upload the server refuses at its sha256 check); then a local
`berth models register` of the same file, for comparison.

Usage: .venv/bin/python benchmarks/upload.py [--size-mb 200]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BERTH = [sys.executable, "-m", "berth.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def large_onnx(folder: Path, size_mb: int) -> tuple[Path, Path]:
    """x[N,4] @ W[4,K] summed over K: K is chosen so that W holds `size_mb` megabytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = size_mb * 1_000_000 // (4 * 4)
    weights = np.random.default_rng(0).random((4, width), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["wide"]),
            helper.make_node("ReduceSum", ["wide"], ["y"], keepdims=1),
        ],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "large.onnx"
    onnx.save_model(model, path)
    sample = folder / "sample.npy"
    np.save(sample, np.ones((2, 4), dtype=np.float32))
    return path, sample


def rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass  # it ended while being read
    return total


class PeakMemory:
    """The highest RSS of a process tree, sampled every 20 ms while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.idle = rss(pid)
        self.peak = self.idle
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self.idle = rss(self.pid)
        self.peak = self.idle
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def __str__(self) -> str:
        mib = 2**20
        return (
            f"server RSS {self.idle / mib:.0f} MiB before, peak {self.peak / mib:.0f} MiB "
            f"(+{(self.peak - self.idle) / mib:.0f} MiB)"
        )


def transfer_only(url: str, key: str, model: Path) -> None:
    """Seconds to upload `model` with a sha256 that cannot match: the server receives and hashes
    the whole body, then refuses it (400) before loading anything: the transfer alone."""
    import httpx

    with model.open("rb") as artifact:
        response = httpx.post(
            f"{url}/api/v1/models/transfer/versions",
            headers={"X-API-Key": key},
            files={"artifact": (model.name, artifact)},
            data={"metadata": '{"sha256": "' + "0" * 64 + '"}'},
            timeout=900,
        )
    if response.status_code != 400 or "sha256" not in response.text:
        raise SystemExit(
            f"expected the sha256 refusal, got {response.status_code}: {response.text}"
        )
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-upload-bench-") as folder:
        work = Path(folder)
        model, sample = large_onnx(work, args.size_mb)
        size = model.stat().st_size
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        server_env = {**env, "BERTH_HOME": str(work / "home"), "BERTH_LOG_LEVEL": "warning"}
        created = subprocess.run(
            [*BERTH, "keys", "create", "uploader", "--scope", "admin"],
            env=server_env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = created.stdout.strip().splitlines()[-1]
        port = free_port()
        server = subprocess.Popen(
            [*BERTH, "serve", "--allow-empty", "--port", str(port), "--workers", "1"],
            env=server_env,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url)
            client_env = {
                **env,
                "BERTH_SERVER": url,
                "BERTH_API_KEY": key,
                "BERTH_HOME": str(work / "client"),
            }
            mb = size / 1e6
            with PeakMemory(server.pid) as memory:
                started = time.perf_counter()
                transfer_only(url, key, model)
                seconds = time.perf_counter() - started
            print(f"transfer only (refused at the sha256 check): {mb:.0f} MB in {seconds:.2f} s, "
                  f"{mb / seconds:.0f} MB/s; {memory}")  # fmt: skip
            with PeakMemory(server.pid) as memory:
                started = time.perf_counter()
                registered = subprocess.run(
                    [*BERTH, "models", "register", "large", str(model), "--sample", str(sample)],
                    env=client_env, capture_output=True, text=True,
                )  # fmt: skip
                seconds = time.perf_counter() - started
            if registered.returncode != 0:
                raise SystemExit(f"register failed: {registered.stderr.strip()}")
            print(registered.stdout.strip())
            print(f"berth models register (remote; hash, upload, load-and-predict check, store): "
                  f"{mb:.0f} MB in {seconds:.2f} s, {mb / seconds:.0f} MB/s; {memory} "
                  "(the check loads the model)")  # fmt: skip
            local_env = {**env, "BERTH_HOME": str(work / "local")}
            started = time.perf_counter()
            subprocess.run(
                [*BERTH, "models", "register", "large", str(model), "--sample", str(sample)],
                env=local_env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            print(f"berth models register (local, the same checks, for comparison): "
                  f"{mb:.0f} MB in {seconds:.2f} s, {mb / seconds:.0f} MB/s")  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)


def wait_ready(url: str, seconds: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"berth serve did not get ready at {url} within {seconds:g} s")


if __name__ == "__main__":
    main()
