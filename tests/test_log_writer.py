"""The prediction log's writer process: rows written off the serving process, answers per
batch, errors told back, a writer that dies replaced by the serving process's own thread, and a
real server that logs through it and still writes everything on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from berth.config import Settings
from berth.monitoring.config import PredictionLogConfig
from berth.monitoring.log_writer import WriterGone, WriterProcess
from berth.monitoring.prediction_log import PredictionLog, logged
from berth.registry.service import Registry
from berth.store.db import Database
from berth.store.tables import PredictionRow
from tests.conftest import register_iris
from tests.ports import free_port
from tests.test_prediction_log import dropped, result
from tests.test_prediction_log import logged as logged_rows

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


BERTH = str(Path(sys.executable).parent / "berth")


def process_config(**changes: object) -> PredictionLogConfig:
    found = replace(PredictionLogConfig.from_settings(Settings()), writer="process")
    return replace(found, **changes)


def test_the_writer_process_inserts_each_batch_and_answers_with_its_rows(
    registry: Registry,
) -> None:
    from datetime import UTC, datetime

    async def scenario() -> tuple[list[int], int | None]:
        writer = WriterProcess(registry.db.url)
        await writer.start()
        try:
            batches = [
                [logged(result([1, 0], [[0.2, 0.8], [0.9, 0.1]], [0, 1]), datetime.now(UTC))],
                [logged(result([2.5]), datetime.now(UTC)) for _ in range(3)],
            ]
            counts = [await writer.write(batch) for batch in batches]
        finally:
            await writer.close()
        assert writer._process is not None
        return counts, writer._process.returncode

    counts, code = asyncio.run(scenario())
    assert counts == [2, 3]
    assert code == 0  # it ended on its own once its input closed
    assert logged_rows(registry) == 5
    with registry.db.session() as session:
        scores = session.scalars(select(PredictionRow.score)).all()
    assert sorted(scores, key=lambda s: -1 if s is None else s) == [
        None, None, None, pytest.approx(0.1), pytest.approx(0.8)
    ]  # fmt: skip


def test_the_writer_tells_an_insert_error_back(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    empty = Database(f"sqlite:///{tmp_path / 'no-tables.db'}")  # never migrated

    async def scenario() -> str:
        writer = WriterProcess(empty.url)
        await writer.start()
        try:
            with pytest.raises(RuntimeError) as refused:
                await writer.write([logged(result([1]), datetime.now(UTC))])
            # Still serving after an error.
            with pytest.raises(RuntimeError):
                await writer.write([logged(result([2]), datetime.now(UTC))])
            return str(refused.value)
        finally:
            await writer.close()

    assert "no such table: predictions" in asyncio.run(scenario())


def test_a_log_whose_writer_dies_writes_from_its_own_thread(
    sqlite_registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    log = PredictionLog(sqlite_registry.db, process_config(batch_rows=1000, flush_seconds=30))

    async def scenario() -> tuple[int, int, int]:
        log.start()
        try:
            log.observe(result([1.0, 2.0]))
            first = await log.flush()
            assert log._writer is not None
            assert log._writer._process is not None
            log._writer._process.kill()
            await log._writer._process.wait()
            log.observe(result([3.0]))
            second = await log.flush()
            log.observe(result([4.0]))
            third = await log.flush()
            return first, second, third
        finally:
            await log.stop()

    before = dropped()
    first, second, third = asyncio.run(scenario())
    assert first == 2
    # The batch that found the writer gone was written by the thread, as is every later one.
    assert (second, third) == (1, 1)
    assert logged_rows(sqlite_registry) == 4
    assert dropped() == before
    assert "the prediction log writer process ended" in caplog.text


def test_a_writer_that_cannot_start_leaves_the_thread_to_write(
    sqlite_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(self: WriterProcess) -> None:
        raise WriterGone("no process for you")

    monkeypatch.setattr(WriterProcess, "start", refuse)
    log = PredictionLog(sqlite_registry.db, process_config(batch_rows=1000, flush_seconds=30))

    async def scenario() -> int:
        log.start()
        try:
            log.observe(result([1.0]))
            return await log.flush()
        finally:
            await log.stop()

    assert asyncio.run(scenario()) == 1
    assert logged_rows(sqlite_registry) == 1


def _children(pid: int) -> list[str]:
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def test_a_real_server_logs_through_its_writer_process_and_flushes_it_on_ctrl_c(
    settings: Settings,
    iris_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    monkeypatch.delenv("BERTH_PREDICTION_LOG_WRITER")  # the default: a writer process
    env = {**os.environ, "BERTH_DEV": "true", "BERTH_PREDICTION_LOG_FLUSH_SECONDS": "60"}
    server = subprocess.Popen(
        [BERTH, "serve", "iris@production", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/v1/models/iris/predict"
    body = json.dumps({"features": IRIS_ROW}).encode()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(
                    url, body, {"Content-Type": "application/json"}, method="POST"
                )
                with urllib.request.urlopen(request, timeout=5) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.1)
        for _ in range(24):
            request = urllib.request.Request(
                url, body, {"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert answer.status == 200
        # 25 rows wait in the buffer (the timer is a minute away, the batch 500 rows): the
        # writer starts with the first flush, which Ctrl-C brings.
        assert logged_rows(registry) == 0
        os.killpg(server.pid, signal.SIGINT)  # the whole group, as a terminal's Ctrl-C does
        output = server.communicate(timeout=60)[0].decode()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert server.returncode == 0, output
    assert "Traceback" not in output
    assert logged_rows(registry) == 25
    registry.db.dispose()


def test_a_busy_server_has_its_writer_as_a_child_process(
    settings: Settings,
    iris_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    monkeypatch.delenv("BERTH_PREDICTION_LOG_WRITER")
    env = {**os.environ, "BERTH_DEV": "true", "BERTH_PREDICTION_LOG_FLUSH_SECONDS": "0.1"}
    server = subprocess.Popen(
        [BERTH, "serve", "iris@production", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/v1/models/iris/batch-predict"
    body = json.dumps({"instances": [IRIS_ROW] * 10}).encode()
    try:
        deadline = time.monotonic() + 60
        answered = 0
        while answered < 5:
            try:
                request = urllib.request.Request(
                    url, body, {"Content-Type": "application/json"}, method="POST"
                )
                with urllib.request.urlopen(request, timeout=5) as answer:
                    assert answer.status == 200
                answered += 1
            except OSError:
                assert server.poll() is None
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.1)
        while logged_rows(registry) < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logged_rows(registry) == 50
        writers = [c for c in _children(server.pid) if "berth.monitoring.log_writer" in c]
        assert len(writers) == 1, _children(server.pid)
        # Its database comes through its environment, never its command line.
        assert "sqlite" not in writers[0]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # uvicorn shuts down gracefully, then ends by the signal it got.
    assert server.returncode in (0, -signal.SIGTERM)
    registry.db.dispose()
