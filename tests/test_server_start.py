"""What a worker imports, and how `berth serve --workers 2` starts: the server's optional parts
(the console, Redis, JWT verification) are imported only when used, the references are checked
while the supervisor imports the server, and a refusal or a Ctrl-C is one clean exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BERTH, free_port, iris_home

pytestmark = pytest.mark.server

# Imported only by servers that use them: a Redis URL, JWTs, a page of the console, a table.
NOT_AT_START = (
    "redis",
    "jwt",
    "cryptography",
    "httpx",
    "jinja2",
    "rich",
    "pandas",
    "pyarrow",
    "torch",
    "berth.console.pages",
)

STARTED = """
import asyncio, json, sys
from berth.server import create_app_from_env
app = create_app_from_env()

async def started() -> list[str]:
    async with app.router.lifespan_context(app):
        return sorted(m for m in {names} if m in sys.modules)

print(json.dumps(asyncio.run(started())))
"""

CONSOLE = """
import json, sys
from starlette.testclient import TestClient  # imports httpx, and httpx rich
from berth.server import create_app_from_env
app = create_app_from_env()
with TestClient(app) as client:
    before = "berth.console.pages" in sys.modules
    page = client.get("/console/sign-in")
    after = "berth.console.pages" in sys.modules
    missing = client.get("/console/no-such-page").status_code
print(json.dumps([before, page.status_code, "<form" in page.text, after, missing]))
"""


def _probe(tmp_path: Path, code: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {"BERTH_HOME": str(tmp_path / "home"), "BERTH_SERVED": "[]"}
    probe = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout.strip().splitlines()[-1])


def test_a_started_worker_has_not_imported_the_console_or_the_optional_backends(
    tmp_path: Path,
) -> None:
    assert _probe(tmp_path, STARTED.format(names=repr(NOT_AT_START))) == []


def test_the_console_is_built_by_its_first_request_and_answers_as_before(
    tmp_path: Path,
) -> None:
    before, status, form, after, missing = _probe(tmp_path, CONSOLE)
    assert (before, status, form, after) == (False, 200, True, True)
    assert missing == 404


def test_an_unknown_reference_stops_two_workers_before_any_starts(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    env = iris_home(tmp_path / "home", iris_files)
    served = subprocess.run(
        [
            *BERTH,
            "serve",
            "iris@production",
            "nosuch",
            "--workers",
            "2",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert served.returncode == 1
    assert served.stderr.strip().splitlines() == [
        "error: model 'nosuch' is not registered; see `berth models list`"
    ]
    assert "Started server process" not in served.stdout + served.stderr
    assert "Serving" not in served.stdout


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_ctrl_c_while_two_workers_start_exits_without_a_traceback(
    tmp_path: Path, iris_files: tuple[Path, Path], delay: float
) -> None:
    env = iris_home(tmp_path / "home", iris_files)
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*BERTH, "serve", "--workers", "2", "--port", str(free_port())],
            env=env,
            stdout=sink,
            stderr=sink,
        )
        time.sleep(delay)  # in the CLI, the supervisor's imports or the workers' start
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    # 130: Berth stopped itself; -SIGINT: the signal came while a process image was still
    # starting (the exec into the supervisor), which is how a shell sees Ctrl-C too.
    assert code in (0, 130, -signal.SIGINT), text[-3000:]


EXEC_WITH_CTRL_C_PENDING = """
import os, signal, sys
from berth.cli.entry import hold_ctrl_c
hold_ctrl_c()
os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C during the exec, before any handler exists
os.execv(sys.executable, [sys.executable, "-m", "berth.cli.supervisor"])
"""


def test_a_ctrl_c_held_over_the_exec_stops_the_supervisor_quietly(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    """`berth serve --workers N` holds SIGINT over its exec; the supervisor takes it as Ctrl-C."""
    env = iris_home(tmp_path / "home", iris_files)
    env.update({"BERTH_PORT": str(free_port()), "BERTH_WORKERS": "2"})
    stopped = subprocess.run(
        [sys.executable, "-c", EXEC_WITH_CTRL_C_PENDING],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr + stopped.stdout
    assert "Started server process" not in stopped.stderr + stopped.stdout


FREED = """
from berth.serving.heap import return_freed_memory

def resident_mb() -> float:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

blocks = [bytes(1000) for _ in range(50_000)]  # 50 MB in small heap allocations
pinned = bytes(1000)  # allocated after them: the freed pages are not at the heap's end
del blocks
before = resident_mb()
return_freed_memory()
print(before - resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_the_memory_freed_while_starting_goes_back_to_the_os() -> None:
    released = subprocess.run(
        [sys.executable, "-c", FREED], capture_output=True, text=True, timeout=60, check=True
    )
    assert float(released.stdout) > 30  # MB of the 50 freed
