"""Metric values of forked workers (berth.observability.multiprocess_values): the pid is kept
instead of asked for at every update, and a forked child still writes its own file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from berth.observability.multiprocess_values import current_pid, use_cached_pid
use_cached_pid()
from prometheus_client import Counter
served = Counter("served", "calls served")
served.inc()
pids = [os.getpid()]
for _ in range(2):
    child = os.fork()
    if child == 0:
        assert current_pid() == os.getpid(), (current_pid(), os.getpid())
        served.inc(5)
        os._exit(0)
    os.waitpid(child, 0)
    pids.append(child)
print(" ".join(map(str, pids)))
"""


def test_forked_children_write_their_own_values(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(directory)], capture_output=True, text=True, check=True
    )
    pids = done.stdout.split()
    assert sorted(p.name for p in directory.iterdir()) == sorted(f"counter_{p}.db" for p in pids)
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("served_total") == 11.0  # 1 in the parent, 5 in each child
