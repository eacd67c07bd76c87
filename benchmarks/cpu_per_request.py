"""`make bench-cpu`: where the CPU of a request goes, in make bench's main server.

Starts Berth as `make bench` runs it (2 workers, keys, metrics, JSON logs and the prediction log
on; iris and the RandomForest registered as scikit-learn files), drives the constant route and
iris v1 with wrk (64 connections), and reads the CPU time of the server and of wrk from /proc
meanwhile. On a machine whose cores are all busy, requests per second is the cores divided by the
CPU one request costs, so the ratio of iris to the constant route follows from the
microseconds per request printed here: this is the measure to compare two versions of the code
with (one after the other, alternating, a few times: the machine's speed drifts).

Usage: .venv/bin/python benchmarks/cpu_per_request.py [ROUNDS]
Env: DUR=8 (seconds per wrk run); EXTRA="BERTH_X=1 BERTH_Y=2" adds server settings (for
example BERTH_PREDICTION_LOG_ENABLED=false, to see what the prediction log costs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serve_bench as sb  # noqa: E402
import speed  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system time of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    after = fields[fields.rindex(")") + 2 :].split()
    return (int(after[11]) + int(after[12])) / TICKS


def busy_seconds() -> float:
    """The machine's busy time, all cores, in seconds."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICKS


def run(url: str, body: str | None, key: str, server: list[int]) -> dict[str, Any]:
    """wrk on `url`; CPU per request of the server's processes, of wrk and of the rest."""
    seconds = sb.DUR
    sb.wrk(url, body, key, 16, seconds=2)  # warm-up
    found: dict[str, Any] = {}
    load = threading.Thread(target=lambda: found.update(sb.wrk(url, body, key, 64, seconds)))
    load.start()
    time.sleep(1.0)  # past wrk's start
    wrk = int(subprocess.check_output(["pgrep", "-n", "wrk"]).split()[0])
    pids = [*server, wrk]
    before = {pid: cpu_seconds(pid) for pid in pids}
    busy, started = busy_seconds(), time.monotonic()
    time.sleep(seconds - 2.5)  # and stop before wrk does
    elapsed = time.monotonic() - started
    used = {pid: (cpu_seconds(pid) - before[pid]) / elapsed for pid in pids}
    busy = (busy_seconds() - busy) / elapsed
    load.join()
    rate = found["rps"]
    cores = {"server": sum(used[pid] for pid in server), "wrk": used[wrk]}
    cores["other"] = busy - cores["server"] - cores["wrk"]
    return {
        "rps": rate,
        "p99_ms": found["p99_ms"],
        "errors": found["errors"],
        "cores": {name: round(value, 2) for name, value in cores.items()},
        "us_per_request": {name: round(value / rate * 1e6) for name, value in cores.items()},
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    (HERE / "results").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="berth-cpu-"))
    env, key, rows, _ = sb.prepare(work)
    env["BENCH_KEY"] = key
    extra = dict(item.split("=", 1) for item in os.environ.get("EXTRA", "").split() if item)
    server, base = speed.berth_server(
        "main", env, ["iris@sklearn", "rf@sklearn"], rows, BERTH_OPEN_ROUTE_RATE="", **extra
    )
    path, body = sb.bodies("iris@sklearn", rows["iris"])["v1"]
    process, _ = speed.start(server, HERE / "results" / "cpu-per-request.log")
    try:
        time.sleep(3)
        processes = sb.tree(process.pid)  # the supervisor and its workers
        for _ in range(rounds):
            for label, url, sent in (
                ("const", f"{base}/health", None),
                ("iris", base + path, body),
            ):
                found = run(url, sent, key, processes)
                print(
                    f"{label:5} {found['rps']:8.0f} req/s  p99 {found['p99_ms']} ms  "
                    f"errors {found['errors']}  cores {found['cores']}  "
                    f"us/request {found['us_per_request']}",
                    flush=True,
                )
    finally:
        sb.stop(process)


if __name__ == "__main__":
    main()
