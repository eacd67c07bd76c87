"""`berth jobs list|show|cancel`, in process through the real entry point, on records made with
`JobService` in the registry on SQLite and PostgreSQL. No job runs: each record is put in the
state a job process would have left it in (the clock is injected for the old heartbeat). Each
test runs in local and in remote mode (through the admin API)."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from berth.config import Settings
from berth.jobs import records as r
from berth.jobs.config import JobsConfig
from berth.jobs.launch import job_log
from berth.jobs.records import Counts, JobInfo, JobService
from berth.jobs.run_args import run_args
from berth.jobs.spec import BatchSpec
from berth.registry.service import Registry
from berth.store.audit import AuditLog
from tests.cli_modes import Mode
from tests.conftest import Run
from tests.local_twin import assert_same_output

SPEC = BatchSpec(model="iris@production", source="/data/in.csv", sink="/data/out.parquet")


@pytest.fixture
def jobs(registry: Registry, cli_mode: Mode, monkeypatch: pytest.MonkeyPatch) -> JobService:
    """Job records in the parametrised registry, which the CLI under test reads too (in remote
    mode through the server, which serves this registry)."""
    if not cli_mode.remote:
        monkeypatch.setenv("BERTH_DATABASE_URL", registry.db.url)
    return JobService(registry.db)


def _queued(service: JobService, spec: BatchSpec = SPEC) -> JobInfo:
    return service.create(
        job_key=spec.job_key(),
        model=spec.model,
        source=spec.source,
        sink=spec.sink,
        args=run_args(spec),
    )


def _running(service: JobService, spec: BatchSpec = SPEC, **counts: Any) -> JobInfo:
    job = _queued(service, spec)
    service.start(job.id, version="iris:1", job_key=spec.job_key(), rows_total=1000,
                  resumed_at_row=None)  # fmt: skip
    service.heartbeat(job.id, Counts(**counts))
    return service.get(job.id)


def _lost(registry: Registry) -> JobInfo:
    """A running record whose last heartbeat was five minutes ago: its process was killed."""
    past = datetime.now(UTC) - timedelta(minutes=5)
    return _running(JobService(registry.db, clock=lambda: past), scored=300)


def _finished(service: JobService, status: str, message: str, **counts: Any) -> JobInfo:
    job = _running(service)
    return service.finish(job.id, status, Counts(**counts), message)


def _flat(text: str) -> str:
    """Output as one line of words: rich's table borders and line wrapping removed."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def _json(run: Run, *args: str) -> Any:
    outcome = run(*args, "--json")
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def _error(run: Run, *args: str) -> str:
    outcome = run(*args)
    assert outcome.code == 1, (args, outcome.out)
    assert outcome.err.startswith("error:"), outcome.err
    return _flat(outcome.err)


def test_list_shows_every_state_with_counts_and_filters(
    run_both: Run, jobs: JobService, registry: Registry
) -> None:
    queued = _queued(jobs)
    live = _running(jobs, scored=400, skipped=50, rejected=2, rows_per_second=1234.5)
    lost = _lost(registry)
    done = _finished(jobs, r.SUCCEEDED, "scored 1000 rows", scored=990, skipped=10)
    failed = _finished(jobs, r.FAILED, "too many bad rows", scored=10, rejected=90)
    cancelled = jobs.cancel(_queued(jobs).id)

    listed = run_both("jobs", "list")
    assert listed.code == 0, listed.err
    lines = {int(line.split()[0]): line for line in map(_flat, listed.out.splitlines())
             if line.strip() and _flat(line).split()[0].isdigit()}  # fmt: skip
    assert {i: line.split()[1] for i, line in lines.items()} == {
        queued.id: "queued",
        live.id: "running",
        lost.id: "lost",
        done.id: "succeeded",
        failed.id: "failed",
        cancelled.id: "cancelled",
    }
    assert "iris@production → iris:1" in lines[live.id]
    assert "/data/in.csv → /data/out.parquet" in lines[live.id]
    assert "400/50/2" in lines[live.id]
    assert "1,234" in lines[live.id]  # rows/s, rounded
    assert "45%" in lines[live.id]  # (400 + 50 + 2) of 1,000 rows
    assert "100%" in lines[done.id]
    assert lines[queued.id].split()[-2:] == ["-", "-"]  # not started: no start, no duration

    documents = _json(run_both, "jobs", "list")
    assert [d["id"] for d in documents] == sorted(lines, reverse=True)
    assert {d["id"]: d["status"] for d in documents}[lost.id] == "lost"
    assert [d["id"] for d in _json(run_both, "jobs", "list", "--status", "lost")] == [lost.id]
    assert [d["id"] for d in _json(run_both, "jobs", "list", "--status", "running")] == [live.id]
    assert [d["id"] for d in _json(run_both, "jobs", "list", "--status", "failed")] == [failed.id]
    assert [d["id"] for d in _json(run_both, "jobs", "list", "--limit", "2")] == [
        cancelled.id,
        failed.id,
    ]
    assert "queued, running, lost, succeeded" in _error(
        run_both, "jobs", "list", "--status", "done"
    )
    assert "No jobs recorded with status queued" not in run_both("jobs", "list").out
    jobs.cancel(queued.id)
    assert "No jobs recorded with status queued" in _flat(
        run_both("jobs", "list", "--status", "queued").out
    )


def test_show_has_every_field_the_log_and_the_command_that_resumes(
    run_both: Run, jobs: JobService, settings: Settings
) -> None:
    spec = BatchSpec(
        model="iris@production",
        source="postgresql+psycopg://scorer:s3cret@db/shop",
        table="customers",
        sink="/data/my scores.parquet",
        features=("a", "b"),
    )
    job = _running(jobs, spec, scored=200, rows_per_second=100.0)
    log = job_log(JobsConfig.from_settings(settings), job.id)
    log.parent.mkdir(parents=True)
    log.write_text("started\n")

    shown = run_both("jobs", "show", str(job.id))
    assert shown.code == 0, shown.err
    text = _flat(shown.out)
    assert f"job {job.id} running" in text
    for expected in (
        "model iris@production → iris:1",
        "sink /data/my scores.parquet",
        "rows 1,000 in the source",
        "scored 200",
        "speed 100.0 rows/s",
        "progress 20%, ETA 8s",  # 800 rows left at 100 rows/s
        "origin cli",
        f"job key {spec.job_key()}",
        f"log {log}",
    ):
        assert expected in text, (expected, text)
    assert "s3cret" not in shown.out
    assert "source postgresql+psycopg://scorer:***@db/shop" in text
    masked = [a.replace("s3cret", "***") for a in run_args(spec)]
    assert shlex.join(["berth", "batch", "run", *masked]) in text
    assert "password hidden" in text

    document = _json(run_both, "jobs", "show", str(job.id))
    assert document["command"] == shlex.join(["berth", "batch", "run", *run_args(spec)])
    assert shlex.split(document["command"])[3:] == run_args(spec)  # it parses back as stored
    assert document["log"] == str(log)
    assert document["progress"] == 0.2
    assert document["eta_seconds"] == 8.0
    assert document["job_key"] == spec.job_key()


def test_show_explains_finished_and_lost_jobs(
    run_both: Run, jobs: JobService, registry: Registry
) -> None:
    failed = _finished(jobs, r.FAILED, "3% of rows were rejected (limit 1%)", rejected=30)
    text = _flat(run_both("jobs", "show", str(failed.id)).out)
    assert f"job {failed.id} failed" in text
    assert "message 3% of rows were rejected (limit 1%)" in text
    assert "Running it again resumes where it stopped" in text
    assert " log " not in text  # no log file was written for it
    assert _json(run_both, "jobs", "show", str(failed.id))["log"] is None

    lost = _lost(registry)
    text = _flat(run_both("jobs", "show", str(lost.id)).out)
    assert f"job {lost.id} lost" in text
    assert "stopped reporting" in text
    assert shlex.join(["berth", "batch", "run", *run_args(SPEC)]) in text
    assert "duration 0s" in text  # from its start to its last heartbeat, not to now

    assert "no job 999" in _error(run_both, "jobs", "show", "999")


def test_cancel_queued_at_once_running_after_its_chunk(
    run_both: Run, jobs: JobService, registry: Registry, cli_mode: Mode
) -> None:
    queued = _queued(jobs)
    said = run_both("jobs", "cancel", str(queued.id))
    assert said.code == 0, said.err
    assert f"Cancelled job {queued.id}; it had not started" in _flat(said.out)
    assert jobs.get(queued.id).status == r.CANCELLED

    running = _running(jobs, scored=100)
    said = run_both("jobs", "cancel", str(running.id))
    assert said.code == 0, said.err
    text = _flat(said.out)
    assert "stop after its current chunk" in text
    assert "Running the same command again resumes it" in text
    assert shlex.join(["berth", "batch", "run", *run_args(SPEC)]) in text
    after = jobs.get(running.id)
    assert (after.status, after.cancel_requested) == (r.RUNNING, True)
    assert jobs.heartbeat(running.id, Counts(scored=150)) is True  # what the job process sees

    lost = _lost(registry)
    assert "no process is running it" in _flat(run_both("jobs", "cancel", str(lost.id)).out)

    done = _finished(jobs, r.SUCCEEDED, "ok", scored=1000)
    assert f"job {done.id} already succeeded" in _error(run_both, "jobs", "cancel", str(done.id))
    assert "no job 999" in _error(run_both, "jobs", "cancel", "999")

    events = [(e.action, e.target, e.outcome) for e in AuditLog(registry.db).list()]
    assert ("job.cancel", f"job {queued.id}", "ok") in events
    assert ("job.cancel", f"job {running.id}", "ok") in events
    assert ("job.cancel", f"job {done.id}", "refused") in events
    cancels = [e for e in AuditLog(registry.db).list() if e.action == "job.cancel"]
    assert {e.actor for e in cancels} == {cli_mode.actor}


@pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)
def test_both_modes_print_the_same(
    run_both: Run, jobs: JobService, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No live running job: its duration grows between the two runs.
    queued = _queued(jobs)
    lost = _lost(registry)
    done = _finished(jobs, r.SUCCEEDED, "scored 1000 rows", scored=990, skipped=10)
    spec = BatchSpec(model="iris@production", source="postgresql+psycopg://u:pw@db/shop",
                     table="t", sink="/data/out.parquet")  # fmt: skip
    failed = _finished(jobs, r.FAILED, "too many bad rows", scored=10, rejected=90)
    secret = _queued(jobs, spec)
    for command in (
        ["jobs", "list"],
        ["jobs", "list", "--json"],
        ["jobs", "list", "--status", "lost"],
        ["jobs", "list", "--status", "done"],
        *(["jobs", "show", str(job.id)] for job in (queued, lost, done, failed, secret)),
        ["jobs", "show", str(secret.id), "--json"],
        ["jobs", "show", "999"],
        ["jobs", "cancel", str(done.id)],
        ["jobs", "cancel", "999"],
    ):
        assert_same_output(run_both, monkeypatch, registry.db.url, *command)
    remote = run_both("jobs", "cancel", str(queued.id))
    assert remote.code == 0, remote.err
    assert f"Cancelled job {queued.id}; it had not started" in remote.out
