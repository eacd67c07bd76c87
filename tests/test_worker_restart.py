"""`berth serve --workers 2`: a worker killed with SIGKILL is replaced by a fork of the
supervisor, which has the server imported already, and the server answers throughout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import BERTH, free_port, iris_home, wait_ready
from tests.processes import children_of, command_of, parent_of

pytestmark = pytest.mark.server

ROW = [5.1, 3.5, 1.4, 0.2]
_STARTED = re.compile(r"Started server process \[(\d+)\]")


def _workers(log: Path) -> list[int]:
    return [int(pid) for pid in _STARTED.findall(log.read_text())]


def _ready_workers(log: Path) -> int:
    return log.read_text().count("Application startup complete")


def test_a_killed_worker_is_replaced_by_a_fork_of_the_preloaded_server(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    env = iris_home(tmp_path / "home", iris_files)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*BERTH, "serve", "--port", str(port), "--workers", "2", "--dev"],
            env=env,
            stdout=sink,
            stderr=sink,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server)
        deadline = time.monotonic() + 60
        while _ready_workers(log) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        first = _workers(log)
        assert len(first) == 2
        # The supervisor (berth serve, same pid after exec) forked both workers from itself,
        # with the server imported, and runs no other process beside them.
        assert "berth.cli.supervisor" in command_of(server.pid)
        assert sorted(children_of(server.pid)) == sorted(first)
        assert all(parent_of(pid) == server.pid for pid in first)

        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base) as client:
            while _ready_workers(log) < 3 and time.monotonic() < deadline:
                # the surviving worker answers meanwhile (each request on a new connection)
                answer = client.post(
                    "/api/v1/predict", json={"features": ROW}, headers={"Connection": "close"}
                )
                assert answer.status_code == 200
                time.sleep(0.05)
        replacement = [pid for pid in _workers(log) if pid not in first]
        assert len(replacement) == 1, log.read_text()[-3000:]
        assert parent_of(replacement[0]) == server.pid
        with httpx.Client(base_url=base) as client:
            answers = [
                client.post(
                    "/api/v1/predict", json={"features": ROW}, headers={"Connection": "close"}
                ).status_code
                for _ in range(20)
            ]
        assert answers == [200] * 20
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text
    deadline = time.monotonic() + 10
    workers = [*first, *replacement]
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived it"
