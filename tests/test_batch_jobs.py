"""Batch jobs end to end in process: every source and sink, resuming, skipping, bad rows.

The crash tests (kill -9 of a real `berth batch run`) are in test_batch_crash.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from berth.config import Settings
from berth.demo_model import churn_data
from berth.errors import Conflict, InvalidInput
from berth.jobs import records as r
from berth.jobs.batch import Summary, run_job
from berth.jobs.file_sinks import MANIFEST
from berth.jobs.records import JobService
from berth.jobs.run_args import parse_run_args, run_args
from berth.jobs.spec import BatchSpec
from berth.jobs.summary import describe
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes.loading import load_version
from tests.cli_modes import Mode
from tests.conftest import Run, register_churn, register_iris

FEATURES = ["tenure_months", "monthly_charges", "plan", "support_calls"]


@pytest.fixture
def churn(sqlite_registry: Registry, churn_files: tuple[Path, Path, Path]) -> VersionInfo:
    return register_churn(sqlite_registry, churn_files)


@pytest.fixture
def customers() -> pd.DataFrame:
    """1,000 churn rows with an id column (not a feature) in front."""
    frame, _ = churn_data(1000)
    frame = frame.reset_index(drop=True)
    frame.insert(0, "customer_id", np.arange(1000, 2000))
    return frame


def expected(version: VersionInfo, registry: Registry, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
    runtime = load_version(registry, version)
    return np.asarray(runtime.predict(frame[FEATURES]).predictions)


def batch(
    registry: Registry, settings: Settings, spec: BatchSpec, stop: threading.Event | None = None
) -> Summary:
    return run_job(registry, settings, spec, args=run_args(spec), stop=stop)


def read_folder(folder: Path) -> pd.DataFrame:
    manifest = json.loads((folder / MANIFEST).read_text())
    parts = [folder / p["file"] for p in manifest["parts"]]
    frames = []
    for part in parts:
        if part.suffix == ".parquet":
            frames.append(pd.read_parquet(part))
        elif part.suffix == ".csv":
            frames.append(pd.read_csv(part))
        else:
            frames.append(pd.read_json(part, lines=True))
    return pd.concat(frames, ignore_index=True)


def read_errors(folder: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_json(p, lines=True) for p in sorted(folder.glob("errors-*.jsonl"))],
        ignore_index=True,
    )


@pytest.mark.parametrize(("source_ext", "sink_ext"), [
    ("csv", "parquet"), ("parquet", "csv"), ("jsonl", "jsonl"), ("parquet", "parquet"),
])  # fmt: skip
def test_file_to_file_scores_every_row_once_in_chunks(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
    source_ext: str,
    sink_ext: str,
) -> None:
    source = tmp_path / f"customers.{source_ext}"
    if source_ext == "csv":
        customers.to_csv(source, index=False)
    elif source_ext == "parquet":
        customers.to_parquet(source, row_group_size=300)  # row groups cut across chunks
    else:
        customers.to_json(source, orient="records", lines=True)
    sink = tmp_path / f"scores.{sink_ext}"
    spec = BatchSpec(
        model="churn@production",
        source=str(source),
        sink=str(sink),
        id_column="customer_id",
        chunk_size=128,
    )
    summary = batch(sqlite_registry, settings, spec)

    assert summary.ok, summary.describe()
    assert (summary.counts.scored, summary.counts.skipped, summary.counts.rejected) == (1000, 0, 0)
    scores = read_folder(sink)
    assert list(scores.columns) == [
        "customer_id", "prediction", "probability_0", "probability_1",
        "model", "version", "predicted_at",
    ]  # fmt: skip
    assert sorted(scores["customer_id"]) == list(range(1000, 2000))
    by_id = scores.set_index("customer_id").loc[customers["customer_id"]]
    np.testing.assert_array_equal(
        by_id["prediction"].to_numpy(), expected(churn, sqlite_registry, customers)
    )
    assert np.allclose(by_id["probability_0"] + by_id["probability_1"], 1.0)
    assert set(scores["model"]) == {"churn"}
    assert set(scores["version"]) == {churn.number}
    assert len(json.loads((sink / MANIFEST).read_text())["parts"]) == 8  # ceil(1000 / 128)


def test_a_file_without_an_id_column_is_keyed_by_row_number(
    sqlite_registry: Registry, settings: Settings, churn: VersionInfo, tmp_path: Path
) -> None:
    frame, _ = churn_data(50)
    frame.to_csv(tmp_path / "in.csv", index=False)
    spec = BatchSpec(model="churn", source=str(tmp_path / "in.csv"), sink=str(tmp_path / "o.csv"))
    assert batch(sqlite_registry, settings, spec).counts.scored == 50
    assert sorted(read_folder(tmp_path / "o.csv")["id"]) == list(range(50))


def test_an_interrupted_job_resumes_and_a_finished_one_writes_nothing_new(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    customers.to_parquet(tmp_path / "in.parquet")
    sink = tmp_path / "out.parquet"
    spec = BatchSpec(
        model="churn",
        source=str(tmp_path / "in.parquet"),
        sink=str(sink),
        id_column="customer_id",
        chunk_size=100,
    )
    stop = threading.Event()
    stop.set()  # a signal arrives at once: the job stops after its first chunk
    first = batch(sqlite_registry, settings, spec, stop)
    assert first.status == r.CANCELLED
    assert first.counts.scored == 100
    assert "resume after row 100" in (first.message or "")

    second = batch(sqlite_registry, settings, spec)
    assert second.ok
    assert second.resumed_at_row == 100
    assert second.counts.scored == 1000  # the whole job's count, both runs together
    scores = read_folder(sink)
    assert scores["customer_id"].is_unique
    assert len(scores) == 1000

    parts = sorted(p.name for p in sink.glob("part-*"))
    again = batch(sqlite_registry, settings, spec)
    assert again.ok
    assert (again.counts.scored, again.counts.skipped) == (0, 1000)
    assert sorted(p.name for p in sink.glob("part-*")) == parts

    jobs = JobService(sqlite_registry.db).list()
    assert [j.status for j in jobs] == [r.SUCCEEDED, r.SUCCEEDED, r.CANCELLED]
    assert jobs[1].resumed_at_row == 100


def test_berth_jobs_cancel_stops_a_running_job_after_its_chunk(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    customers.to_parquet(tmp_path / "in.parquet")
    jobs = JobService(sqlite_registry.db)

    class CancelAtOnce:
        def start(self, description: str, total: int | None, done: int) -> None:
            assert total == 1000

        def update(self, done: int) -> None:
            jobs.cancel(jobs.list()[0].id)  # as `berth jobs cancel` would, from anywhere

        def stop(self) -> None:
            pass

    spec = BatchSpec(
        model="churn", source=str(tmp_path / "in.parquet"), sink=str(tmp_path / "o.parquet"),
        id_column="customer_id", chunk_size=250,
    )  # fmt: skip
    summary = run_job(sqlite_registry, settings, spec, args=[], progress=CancelAtOnce())
    assert summary.status == r.CANCELLED
    assert summary.counts.scored == 250
    assert jobs.list()[0].message == (
        "cancelled by `berth jobs cancel`; run the same command again to resume after row 250"
    )
    assert batch(sqlite_registry, settings, spec).resumed_at_row == 250


def test_parts_the_manifest_does_not_name_are_dropped_and_redone(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    """What a kill between writing a part and committing the manifest leaves behind."""
    customers.to_csv(tmp_path / "in.csv", index=False)
    sink = tmp_path / "out.parquet"
    spec = BatchSpec(
        model="churn", source=str(tmp_path / "in.csv"), sink=str(sink),
        id_column="customer_id", chunk_size=400,
    )  # fmt: skip
    stop = threading.Event()
    stop.set()
    batch(sqlite_registry, settings, spec, stop)
    leftover = sink / "part-000002.parquet"
    pd.read_parquet(sink / "part-000001.parquet").to_parquet(leftover)  # uncommitted duplicate
    (sink / "part-000003.parquet.tmp").write_bytes(b"half a file")

    assert batch(sqlite_registry, settings, spec).ok
    scores = read_folder(sink)
    assert scores["customer_id"].is_unique
    assert len(scores) == 1000
    assert not list(sink.glob("*.tmp"))


def test_bad_rows_go_to_the_errors_sink_with_reasons(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    frame = customers.astype({"monthly_charges": object, "plan": object})
    frame.loc[3, "monthly_charges"] = "lots"
    frame.loc[10, "tenure_months"] = None
    frame.loc[500, "plan"] = None
    frame.to_csv(tmp_path / "in.csv", index=False)
    spec = BatchSpec(
        model="churn", source=str(tmp_path / "in.csv"), sink=str(tmp_path / "out.parquet"),
        id_column="customer_id", chunk_size=256, max_error_rate=0.01,
        errors=str(tmp_path / "rejected.jsonl"),
    )  # fmt: skip
    summary = batch(sqlite_registry, settings, spec)

    assert summary.ok
    assert (summary.counts.scored, summary.counts.rejected) == (997, 3)
    errors = read_errors(tmp_path / "rejected.jsonl").set_index("customer_id")
    assert sorted(errors.index) == [1003, 1010, 1500]
    reasons = errors["reason"].to_dict()
    assert "got a string 'lots'" in reasons[1003]
    assert "tenure_months" in reasons[1010]
    assert "null" in reasons[1010]
    assert json.loads(errors["row"].to_dict()[1003])["monthly_charges"] == "lots"
    scores = read_folder(tmp_path / "out.parquet")
    assert len(scores) == 997
    assert not set(scores["customer_id"]) & {1003, 1010, 1500}
    assert "3 rejected" in summary.describe()

    again = batch(sqlite_registry, settings, spec)  # the same command again records nothing twice
    assert (again.counts.scored, again.counts.skipped, again.counts.rejected) == (0, 997, 3)
    assert sorted(read_errors(tmp_path / "rejected.jsonl")["customer_id"]) == [1003, 1010, 1500]
    assert len(read_folder(tmp_path / "out.parquet")) == 997


def test_the_job_fails_when_rejected_rows_pass_the_limit(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    frame = customers.copy()
    frame.loc[frame.index < 30, "support_calls"] = -5  # below the signature's minimum
    frame.to_parquet(tmp_path / "in.parquet")
    spec = BatchSpec(
        model="churn", source=str(tmp_path / "in.parquet"), sink=str(tmp_path / "out.parquet"),
        id_column="customer_id", chunk_size=100, max_error_rate=0.05,
    )  # fmt: skip
    summary = batch(sqlite_registry, settings, spec)

    assert summary.status == r.FAILED
    assert "30 of 100 rows rejected (30.00%), above --max-error-rate 0.05" in (
        summary.message or ""
    )
    errors = read_errors(tmp_path / "out.parquet" / "_errors")
    assert len(errors) == 30
    assert errors["reason"].str.contains("support_calls").all()
    assert JobService(sqlite_registry.db).list()[0].status == r.FAILED


def test_a_tensor_model_takes_every_non_id_column_or_the_named_features(
    sqlite_registry: Registry, settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    version = register_iris(sqlite_registry, iris_files)
    rows = np.load(iris_files[1])
    frame = pd.DataFrame(rows, columns=["a", "b", "c", "d"])
    frame.insert(0, "id", [f"flower-{i}" for i in range(len(frame))])
    frame["note"] = "x"
    frame.to_parquet(tmp_path / "in.parquet")
    spec = BatchSpec(
        model="iris", source=str(tmp_path / "in.parquet"), sink=str(tmp_path / "o.parquet"),
        features=("a", "b", "c", "d"),
    )  # fmt: skip
    assert batch(sqlite_registry, settings, spec).ok
    scores = read_folder(tmp_path / "o.parquet")
    want = load_version(sqlite_registry, version).predict(rows).predictions
    assert list(scores["id"]) == list(frame["id"])
    np.testing.assert_array_equal(scores["prediction"].to_numpy(), want)

    wrong = BatchSpec(
        model="iris", source=str(tmp_path / "in.parquet"), sink=str(tmp_path / "w.parquet")
    )
    summary = batch(sqlite_registry, settings, wrong)  # "note" is not a feature: every row fails
    assert summary.status == r.FAILED
    assert summary.counts.rejected == len(frame)


def test_a_csv_source_without_header_row_is_refused_not_cut(
    sqlite_registry: Registry, settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    register_iris(sqlite_registry, iris_files)
    np.savetxt(tmp_path / "in.csv", np.load(iris_files[1]), delimiter=",", fmt="%.3f")
    spec = BatchSpec(model="iris", source=str(tmp_path / "in.csv"), sink=str(tmp_path / "o.csv"))
    # Read with its first row as column names, one flower would silently go unscored.
    with pytest.raises(
        InvalidInput, match=r"has no header row .* add a first line with the column"
    ):
        batch(sqlite_registry, settings, spec)
    assert not (tmp_path / "o.csv").exists()


def test_workers_give_the_same_results_in_source_order(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    customers.to_parquet(tmp_path / "in.parquet")
    spec = BatchSpec(
        model="churn", source=str(tmp_path / "in.parquet"), sink=str(tmp_path / "o.parquet"),
        id_column="customer_id", chunk_size=100, workers=2,
    )  # fmt: skip
    assert batch(sqlite_registry, settings, spec).ok
    scores = read_folder(tmp_path / "o.parquet")
    assert list(scores["customer_id"]) == list(customers["customer_id"])
    np.testing.assert_array_equal(
        scores["prediction"].to_numpy(), expected(churn, sqlite_registry, customers)
    )


# SQL ---------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database holding the inputs (and, in most tests, the results)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def load_customers(url: str, frame: pd.DataFrame) -> None:
    engine = create_engine(url)
    frame.to_sql("customers", engine, index=False)
    with engine.begin() as connection:
        connection.execute(text("CREATE UNIQUE INDEX customers_id ON customers (customer_id)"))
    engine.dispose()


def table(url: str, sql: str) -> pd.DataFrame:
    engine = create_engine(url)
    try:
        return pd.read_sql(text(sql), engine)
    finally:
        engine.dispose()


def test_sql_table_to_sql_sink_then_new_rows_only(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    warehouse: str,
) -> None:
    load_customers(warehouse, customers.iloc[:700])
    spec = BatchSpec(
        model="churn@production", source=warehouse, table="customers", sink=warehouse,
        sink_table="churn_scores", id_column="customer_id", chunk_size=128,
    )  # fmt: skip
    first = batch(sqlite_registry, settings, spec)
    assert first.ok
    assert first.counts.scored == 700

    scores = table(warehouse, "SELECT * FROM churn_scores ORDER BY customer_id")
    assert list(scores["customer_id"]) == list(range(1000, 1700))
    np.testing.assert_array_equal(
        scores["prediction"].to_numpy(), expected(churn, sqlite_registry, customers.iloc[:700])
    )
    assert {"probability_0", "probability_1", "model", "version", "predicted_at"} <= set(scores)

    engine = create_engine(warehouse)  # the nightly pattern: new customers arrive
    customers.iloc[700:].to_sql("customers", engine, index=False, if_exists="append")
    engine.dispose()
    second = batch(sqlite_registry, settings, spec)
    assert (second.counts.scored, second.counts.skipped) == (300, 700)
    ids = table(warehouse, "SELECT customer_id FROM churn_scores")["customer_id"]
    assert ids.is_unique
    assert len(ids) == 1000


def test_write_back_into_the_source_table_with_a_query_of_unscored_rows(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    warehouse: str,
) -> None:
    load_customers(warehouse, customers)
    spec = BatchSpec(
        model="churn", source=warehouse, sink=warehouse, sink_table="customers",
        query="SELECT * FROM customers", id_column="customer_id", mode="upsert",
        skip_scored=True, chunk_size=300,
    )  # fmt: skip
    first = batch(sqlite_registry, settings, spec)
    assert first.ok
    assert first.counts.scored == 1000
    scored = table(warehouse, "SELECT * FROM customers ORDER BY customer_id")
    assert scored["predicted_at"].notna().all()
    assert len(scored) == 1000
    assert scored["plan"].notna().all()  # the inputs are untouched

    again = batch(sqlite_registry, settings, spec)
    assert (again.counts.scored, again.counts.skipped) == (0, 1000)

    engine = create_engine(warehouse)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE customers SET predicted_at = NULL WHERE customer_id < 1010")
        )
    engine.dispose()
    unscored = BatchSpec(
        model="churn", source=warehouse, sink=warehouse, sink_table="customers",
        query="SELECT * FROM customers WHERE predicted_at IS NULL", id_column="customer_id",
        mode="upsert", chunk_size=4,
    )  # fmt: skip
    third = batch(sqlite_registry, settings, unscored)
    assert third.counts.scored == 10
    assert (
        table(warehouse, "SELECT count(*) AS n FROM customers WHERE predicted_at IS NULL")[
            "n"
        ].item()
        == 0
    )


def test_sql_rejected_rows_commit_with_the_chunk(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    warehouse: str,
    tmp_path: Path,
) -> None:
    frame = customers.copy()
    frame.loc[5, "tenure_months"] = 999  # above the signature's maximum
    load_customers(warehouse, frame)
    spec = BatchSpec(
        model="churn", source=warehouse, table="customers", sink=warehouse,
        sink_table="scores", id_column="customer_id", max_error_rate=0.01,
    )  # fmt: skip
    summary = batch(sqlite_registry, settings, spec)
    assert summary.ok
    assert summary.counts.rejected == 1
    errors = table(warehouse, "SELECT * FROM scores_errors")
    assert list(errors["row_id"]) == ["1005"]
    assert "tenure_months" in errors["reason"][0]
    assert json.loads(errors["row"][0])["tenure_months"] == 999

    for _ in range(2):  # the same command again records the row once, not once per run
        again = batch(sqlite_registry, settings, spec)
        assert (again.counts.scored, again.counts.rejected) == (0, 1)
    assert list(table(warehouse, "SELECT row_id FROM scores_errors")["row_id"]) == ["1005"]
    separate = BatchSpec(
        model="churn", source=warehouse, table="customers", sink=warehouse,
        sink_table="scores", id_column="customer_id", max_error_rate=0.01,
        errors=f"sqlite:///{tmp_path / 'errors.db'}", errors_table="rejects",
    )  # fmt: skip
    for _ in range(2):
        batch(sqlite_registry, settings, separate)
    rejects = table(f"sqlite:///{tmp_path / 'errors.db'}", "SELECT row_id FROM rejects")
    assert list(rejects["row_id"]) == ["1005"]


def test_sql_source_errors_are_clear(
    sqlite_registry: Registry, settings: Settings, churn: VersionInfo, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    no_table = BatchSpec(model="churn", source=url, sink=str(tmp_path / "o.csv"))
    with pytest.raises(InvalidInput, match="--table NAME or --query"):
        batch(sqlite_registry, settings, no_table)
    missing = BatchSpec(model="churn", source=url, table="nope", sink=str(tmp_path / "o.csv"))
    with pytest.raises(InvalidInput, match="no such table"):
        batch(sqlite_registry, settings, missing)
    assert JobService(sqlite_registry.db).list()[0].status == r.FAILED


def test_two_runs_of_one_sql_job_never_commit_the_same_chunk(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    postgres_url: str,
) -> None:
    """The checkpoint update is conditional: a second writer's chunk rolls back."""
    from berth.jobs.sink_types import Checkpoint
    from berth.jobs.sinks import open_sink

    first = open_sink(postgres_url, "scores", "customer_id", False, None, None)
    second = open_sink(postgres_url, "scores", "customer_id", False, None, None)
    before = first.open("job")
    assert second.open("job") == before
    results = pd.DataFrame({"customer_id": [1], "prediction": [0]})
    empty = pd.DataFrame(columns=["customer_id"])
    after = Checkpoint(position={"rows": 1}, chunks=1, scored=1, finished=False)
    first.commit(results, empty, before, after)
    with pytest.raises(Conflict, match="another run of this job"):
        second.commit(results.assign(customer_id=[2]), empty, before, after)
    assert list(table(postgres_url, "SELECT customer_id FROM scores")["customer_id"]) == [1]
    first.close()
    second.close()


# arguments and refusals ----------------------------------------------------------------------


def test_run_arguments_round_trip() -> None:
    spec = BatchSpec(
        model="churn@production", source="postgresql+psycopg://db/x", sink="postgresql://db/y",
        query="SELECT * FROM t WHERE predicted_at IS NULL", sink_table="scores",
        id_column="customer_id", mode="upsert", features=("a", "b"), chunk_size=500,
        workers=2, skip_scored=True, errors="e.jsonl", max_error_rate=0.02,
    )  # fmt: skip
    assert parse_run_args(run_args(spec)) == spec
    with pytest.raises(InvalidInput, match="No such option"):
        parse_run_args(["churn", "--source", "a.csv", "--sink", "b.csv", "--bogus"])
    with pytest.raises(InvalidInput, match="--mode"):
        parse_run_args(["churn", "--source", "a.csv", "--sink", "b.csv", "--mode", "merge"])


def test_stored_arguments_are_read_as_the_command_reads_them() -> None:
    import typer

    from berth.cli.batch import app
    from berth.jobs.run_args import OPTIONS

    command = typer.main.get_command(app)
    run = getattr(command, "commands", {}).get("run", command)
    declared = {f for p in run.params for f in p.opts if f.startswith("--")}
    reporting = {"--job", "--quiet", "--json", "--install-completion", "--show-completion"}
    assert declared - reporting == {o.flag for o in OPTIONS}
    base = ["churn", "--source", "a.csv", "--sink", "b.csv"]
    assert parse_run_args([*base, "--chunk-size=7", "--quiet", "--job", "3"]).chunk_size == 7
    for args, message in [
        ([*base, "--chunk-size", "x"], "'--chunk-size': 'x' is not an integer"),
        ([*base, "--workers"], "requires an argument"),
        (base[1:], "Missing argument 'MODEL'"),
        (base[:3], "Missing option '--sink'"),
        ([*base, "extra"], "unexpected extra argument"),
        ([*base, "--skip-scored=yes"], "does not take a value"),
        ([*base, "--help"], "asked for help"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            parse_run_args(args)


@pytest.mark.parametrize(("change", "message"), [
    ({"source": "in.xlsx"}, "unknown extension"),
    ({"source": "missing.csv"}, "does not exist"),
    ({"mode": "upsert"}, "needs a SQL sink"),
    ({"features": ("tenure_months",)}, "--features names 1 columns"),
    ({"model": "nope"}, "nope"),
])  # fmt: skip
def test_refusals_name_the_fix(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
    change: dict[str, Any],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    customers.to_csv("in.csv", index=False)
    fields: dict[str, Any] = {"model": "churn", "source": "in.csv", "sink": "out.csv"}
    spec = BatchSpec(**{**fields, **change})
    with pytest.raises(Exception, match=message):
        batch(sqlite_registry, settings, spec)


def test_a_sink_folder_belongs_to_one_job_and_one_writer(
    sqlite_registry: Registry,
    settings: Settings,
    churn: VersionInfo,
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    customers.to_csv(tmp_path / "in.csv", index=False)
    customers.iloc[:10].to_csv(tmp_path / "other.csv", index=False)
    spec = BatchSpec(
        model="churn", source=str(tmp_path / "in.csv"), sink=str(tmp_path / "o.parquet")
    )
    assert batch(sqlite_registry, settings, spec).ok
    other = BatchSpec(
        model="churn", source=str(tmp_path / "other.csv"), sink=str(tmp_path / "o.parquet")
    )
    with pytest.raises(Conflict, match="another job"):
        batch(sqlite_registry, settings, other)

    import fcntl

    with (tmp_path / "o.parquet" / "_lock").open("ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Conflict, match="another run is writing"):
            batch(sqlite_registry, settings, spec)


@pytest.fixture
def run_cli(run_both: Run) -> Run:
    """`berth` in local and in remote mode: remotely, the server runs the job in a process of
    its own (with its database) and the command follows it."""
    return run_both


def test_the_cli_prints_a_summary_and_exits_1_on_failure(
    run_cli: Run,
    settings: Settings,
    churn_files: tuple[Path, Path, Path],
    customers: pd.DataFrame,
    tmp_path: Path,
) -> None:
    registry = Registry.from_settings(settings)
    register_churn(registry, churn_files, aliases=())
    customers.to_csv(tmp_path / "in.csv", index=False)
    sink = tmp_path / "out.parquet"
    ok = run_cli(
        "batch", "run", "churn", "--source", str(tmp_path / "in.csv"), "--sink", str(sink),
        "--id-column", "customer_id", "--quiet",
    )  # fmt: skip
    assert ok.code == 0, ok.err
    assert "Job 1 succeeded: 1,000 rows scored with churn:1" in ok.out
    assert f"Results: {sink}" in ok.out
    # What it printed is what the job's record keeps, word for word.
    stored = JobService(registry.db).get(1).summary
    assert stored is not None
    assert ok.out == describe(stored) + "\n"
    as_json = run_cli(
        "batch", "run", "churn", "--source", str(tmp_path / "in.csv"), "--sink", str(sink),
        "--id-column", "customer_id", "--json",
    )  # fmt: skip
    assert as_json.code == 0, as_json.err
    document = json.loads(as_json.out)
    assert (document["job"], document["status"], document["rows_skipped"]) == (2, "succeeded", 1000)
    assert document == JobService(registry.db).get(2).summary
    bad = run_cli(
        "batch", "run", "churn", "--source", str(tmp_path / "in.csv"), "--sink", str(sink),
        "--mode", "upsert",
    )  # fmt: skip
    assert bad.code == 1
    assert "needs a SQL sink" in bad.err
    assert JobService(registry.db).get(3).status == r.FAILED  # its record says why too
    missing = tmp_path / "missing.csv"
    failed = run_cli("batch", "run", "churn", "--source", str(missing), "--sink", str(sink))
    assert failed.code == 1
    assert failed.err.splitlines()[-1].startswith("error: ")
    assert failed.out == ""  # no progress bar: it never read a row
    assert str(missing) in failed.err
    assert JobService(registry.db).get(4).message in failed.err
    registry.db.dispose()


@pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)
def test_remote_mode_refuses_relative_paths_and_runs_nothing(
    run_cli: Run, settings: Settings
) -> None:
    for args, flag in (
        (["--source", "in.csv", "--sink", "/data/out.parquet"], "--source in.csv"),
        (["--source", "/data/in.csv", "--sink", "out"], "--sink out"),
        (["--source", "s3://b/in.csv", "--sink", "/o", "--errors", "bad.csv"], "--errors bad.csv"),
    ):
        refused = run_cli("batch", "run", "churn", *args)
        assert refused.code == 1
        assert refused.err.startswith(f"error: {flag} is a relative path"), refused.err
        assert "absolute path on that host, or a URL" in refused.err
    registry = Registry.from_settings(settings)
    assert JobService(registry.db).list() == []
    registry.db.dispose()


def test_ctrl_c_stops_the_job_after_its_chunk_resumably(
    run_cli: Run,
    settings: Settings,
    churn_files: tuple[Path, Path, Path],
    tmp_path: Path,
    cli_mode: Mode,
) -> None:
    """Locally the run stops itself; remotely the command asks the server to cancel the job
    (so its message names `berth jobs cancel`). Either way: exit 1, a summary, resumable."""
    registry = Registry.from_settings(settings)
    register_churn(registry, churn_files, aliases=())
    frame, _ = churn_data(20_000)
    frame.insert(0, "customer_id", np.arange(len(frame)))
    frame.to_parquet(tmp_path / "in.parquet")
    jobs = JobService(registry.db)

    def interrupt_once_it_runs() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = jobs.list()
            if found and found[0].status == r.RUNNING and found[0].counts.scored > 0:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_once_it_runs, daemon=True)
    watcher.start()
    stopped = run_cli(
        "batch", "run", "churn", "--source", str(tmp_path / "in.parquet"), "--sink",
        str(tmp_path / "out.parquet"), "--id-column", "customer_id", "--chunk-size", "20",
        "--quiet",
    )  # fmt: skip
    watcher.join(5)
    assert stopped.code == 1, stopped.err
    assert "Job 1 cancelled" in stopped.out
    why = "cancelled by `berth jobs cancel`" if cli_mode.remote else "stopped by a signal"
    assert f"{why}; run the same command again to resume after row" in stopped.out
    job = jobs.get(1)
    assert job.status == r.CANCELLED
    assert 0 < job.counts.scored < len(frame)
    registry.db.dispose()
