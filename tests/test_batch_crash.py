"""kill -9 a real `berth batch run` again and again; the last run must leave every row once.

Each round starts the job, waits until it has committed a few more chunks, then sleeps a random
fraction of a chunk's time so the kill lands anywhere: while reading, scoring, writing a part,
between a part and its manifest, or inside a SQL transaction. A final run finishes the job.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from berth.demo_model import churn_data
from tests.conftest import BERTH, berth
from tests.stream_helpers import train_model

ROWS = 40_000
CHUNK = 400
KILLS = 2


@pytest.fixture(scope="module")
def churn_joblib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The churn pipeline as joblib: a job process then starts without importing skops (and
    torch with it), which keeps each of the many starts below short."""
    model, _sample, signature = train_model(tmp_path_factory.mktemp("churn"))
    return model, signature


@pytest.fixture
def env(tmp_path: Path, churn_joblib: tuple[Path, Path]) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    environment["BERTH_HOME"] = str(tmp_path / "home")
    model, signature = churn_joblib
    registered = berth(
        environment, "models", "register", "churn", str(model),
        "--signature", str(signature), "--trust-pickle",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    return environment


@pytest.fixture
def source(tmp_path: Path) -> Path:
    frame, _ = churn_data(ROWS, seed=3)
    frame.insert(0, "customer_id", np.arange(ROWS) * 7 + 11)  # ids unlike row numbers
    path = tmp_path / "customers.parquet"
    frame.to_parquet(path, row_group_size=5_000)
    return path


def crash_repeatedly(
    env: dict[str, str], args: list[str], committed: Callable[[], int], seed: int
) -> list[int]:
    """Run the job KILLS times, each killed at a random instant after a little progress;
    returns the chunks committed at each kill."""
    rng = random.Random(seed)
    at_kill = []
    for _ in range(KILLS):
        before = committed()
        process = subprocess.Popen(
            [*BERTH, "batch", "run", *args, "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        target = before + rng.randint(1, 4)
        deadline = time.monotonic() + 60
        while committed() < target:
            assert process.poll() is None, f"the job ended before it was killed: {process.stderr}"
            assert time.monotonic() < deadline, "the job made no progress in 60 s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))  # somewhere inside the next chunk's work
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL
        at_kill.append(committed())
    return at_kill


def stop_with_sigterm(env: dict[str, str], args: list[str], committed: Callable[[], int]) -> int:
    """SIGTERM a run after some progress: it ends after a committed chunk, exit 1, resumable.
    Returns the chunks committed."""
    before = committed()
    process = subprocess.Popen(
        [*BERTH, "batch", "run", *args, "--quiet"], env=env, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while committed() < before + 2:
        assert process.poll() is None, "the job ended before the signal"
        assert time.monotonic() < deadline, "the job made no progress in 60 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "cancelled" in out
    assert "stopped by a signal; run the same command again to resume" in out
    return committed()


def finish(env: dict[str, str], args: list[str]) -> dict[str, object]:
    done = subprocess.run(
        [*BERTH, "batch", "run", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


def test_kill_9_mid_job_into_a_file_sink_leaves_every_row_once(
    env: dict[str, str], source: Path, tmp_path: Path
) -> None:
    sink = tmp_path / "scores.parquet"
    args = [
        "churn", "--source", str(source), "--sink", str(sink),
        "--id-column", "customer_id", "--chunk-size", str(CHUNK),
    ]  # fmt: skip

    def committed() -> int:
        try:
            manifest = json.loads((sink / "_manifest.json").read_text())
        except (OSError, ValueError):
            return 0
        chunks: int = manifest["checkpoint"]["chunks"]
        return chunks

    at_kill = crash_repeatedly(env, args, committed, seed=1)
    stopped = stop_with_sigterm(env, args, committed)
    assert stopped > at_kill[-1]
    summary = finish(env, args)

    manifest = json.loads((sink / "_manifest.json").read_text())
    ids = pd.concat(
        [pd.read_parquet(sink / p["file"], columns=["customer_id"]) for p in manifest["parts"]]
    )["customer_id"]
    assert len(ids) == ROWS
    assert ids.is_unique
    assert set(ids) == set(np.arange(ROWS) * 7 + 11)
    assert summary["rows_scored"] == ROWS
    assert summary["resumed_at_row"] == stopped * CHUNK
    assert sorted(p.name for p in sink.glob("part-*")) == sorted(
        p["file"] for p in manifest["parts"]
    )  # nothing uncommitted left behind
    print(
        f"\nfile sink: killed at chunks {at_kill}, SIGTERM at {stopped}, then finished: "
        f"{ROWS} rows, each once"
    )

    listed = berth(env, "jobs", "list", "--json")
    if listed.returncode == 0:  # `berth jobs` reads the same records
        statuses = [job["status"] for job in json.loads(listed.stdout)]
        assert statuses[0] == "succeeded"
        assert statuses[1] == "cancelled"  # the SIGTERM
        assert statuses[2:] == ["failed"] * KILLS  # each killed run closed by the next one


def test_kill_9_mid_job_into_postgresql_leaves_every_row_once(
    env: dict[str, str], source: Path, postgres_url: str
) -> None:
    args = [
        "churn", "--source", str(source), "--sink", postgres_url, "--sink-table", "scores",
        "--id-column", "customer_id", "--chunk-size", str(CHUNK),
    ]  # fmt: skip
    engine = create_engine(postgres_url)

    def committed() -> int:
        try:
            with engine.connect() as connection:
                found = connection.execute(
                    text("SELECT chunks FROM berth_batch_checkpoints")
                ).scalar()
        except SQLAlchemyError:
            return 0  # the job has not created its checkpoint table yet
        return int(found or 0)

    try:
        at_kill = crash_repeatedly(env, args, committed, seed=2)
        summary = finish(env, args)
        with engine.connect() as connection:
            ids = pd.read_sql(text("SELECT customer_id FROM scores"), connection)["customer_id"]
            rows = connection.execute(text("SELECT count(*) FROM scores")).scalar_one()
    finally:
        engine.dispose()
    assert rows == ROWS
    assert ids.is_unique
    assert set(ids) == set(np.arange(ROWS) * 7 + 11)
    assert summary["rows_scored"] == ROWS
    assert summary["resumed_at_row"] == at_kill[-1] * CHUNK
    print(f"\nPostgreSQL sink: killed at chunks {at_kill}, then finished: {ROWS} rows, each once")
