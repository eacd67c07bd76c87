"""Schedules and `berth scheduler` on SQLite and PostgreSQL: due ticks run once, missed ticks are
recorded with why, racing schedulers (threads and processes) never start two jobs for one tick,
the commands, and one real scheduled `berth batch run`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from berth.config import Settings
from berth.errors import InvalidInput, NotFound
from berth.jobs import records
from berth.jobs.records import Counts, JobService
from berth.jobs.scheduler import LEASE_NAME, NOT_RUNNING, Pass, Scheduler
from berth.jobs.schedules import MISSED, STARTED, ScheduleService
from berth.registry.service import Registry
from berth.store.audit import AuditLog
from berth.store.db import Database
from berth.store.lease import Lease
from berth.store.tables import JobRow
from tests.cli_modes import Mode
from tests.conftest import BERTH, Run, berth, register_iris
from tests.local_twin import assert_same_output

REPO = Path(__file__).resolve().parent.parent
ARGS = ["iris@production", "--source", "in.csv", "--sink", "out.parquet"]


def at(hour: int, minute: int = 0, second: int = 0, day: int = 1) -> datetime:
    return datetime(2030, 1, day, hour, minute, second, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Launches:
    """A launcher that records what it was asked to start (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str]]] = []
        self._lock = threading.Lock()

    def __call__(self, job_id: int, args: Sequence[str]) -> None:
        with self._lock:
            self.calls.append((job_id, list(args)))


@pytest.fixture
def db(registry: Registry) -> Database:
    return registry.db


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at(9, 30))


@pytest.fixture
def service(db: Database, clock: FakeClock) -> ScheduleService:
    return ScheduleService(db, clock=clock)


@pytest.fixture
def launches() -> Launches:
    return Launches()


@pytest.fixture
def scheduler(db: Database, clock: FakeClock, launches: Launches) -> Scheduler:
    return Scheduler(db, launches, lease=None, clock=clock)


def statuses(service: ScheduleService, name: str) -> list[tuple[datetime, str]]:
    """(tick, status) of every run, oldest first."""
    return [(run.tick, run.status) for run in reversed(service.runs(name, limit=1000))]


# definitions ---------------------------------------------------------------------------------


def test_put_creates_replaces_and_leaves_an_unchanged_schedule_alone(
    service: ScheduleService, clock: FakeClock
) -> None:
    info, outcome = service.put("nightly", cron="0 2 * * *", timezone="Europe/Berlin", args=ARGS)
    assert outcome == "created"
    assert (info.cron, info.timezone, info.args, info.enabled) == (
        "0 2 * * *",
        "Europe/Berlin",
        ARGS,
        True,
    )
    assert info.last_tick is None
    assert info.last_run is None
    assert service.get("nightly") == info
    assert info.next_run(clock.now) == datetime(2030, 1, 2, 1, 0, tzinfo=UTC)  # 02:00 CET

    clock.now = at(9, 40)
    assert service.put("nightly", cron="0 2 * * *", timezone="Europe/Berlin", args=ARGS) == (
        info,
        "unchanged",
    )
    replaced, outcome = service.put("nightly", cron="0 3 * * *", args=[*ARGS, "--skip-scored"])
    assert outcome == "replaced"
    assert (replaced.cron, replaced.timezone) == ("0 3 * * *", "UTC")
    assert replaced.args[-1] == "--skip-scored"
    assert (replaced.created_at, replaced.updated_at) == (at(9, 30), at(9, 40))
    assert [s.name for s in service.list()] == ["nightly"]


@pytest.mark.parametrize(
    ("name", "cron", "timezone", "args", "problem"),
    [
        ("n", "0 2 * * *", "UTC", ["iris", "--source", "in.csv"], "invalid job arguments"),
        ("n", "0 2 * * *", "UTC", [*ARGS, "--chunk-size", "0"], "--chunk-size must be between"),
        ("n", "0 2 * * *", "UTC", [*ARGS, "--job", "3"], "--job is set by the scheduler"),
        ("n", "0 2 * * *", "UTC", [*ARGS, "--job=3"], "--job=3 is set by the scheduler"),
        ("n", "0 2 * *", "UTC", ARGS, "has 4 fields"),
        ("n", "0 2 * * *", "Mars/Base", ARGS, "unknown time zone 'Mars/Base'"),
        ("bad name", "0 2 * * *", "UTC", ARGS, "schedule name 'bad name'"),
        ("x" * 129, "0 2 * * *", "UTC", ARGS, "must be 1-128"),
        ("nightly\n", "0 2 * * *", "UTC", ARGS, "must be 1-128"),
    ],
)
def test_a_schedule_that_could_not_run_is_refused_and_not_stored(
    service: ScheduleService, name: str, cron: str, timezone: str, args: list[str], problem: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.put(name, cron=cron, timezone=timezone, args=args)
    assert problem in caught.value.message
    assert service.list() == []


def test_delete_enable_disable_and_unknown_names(service: ScheduleService) -> None:
    service.put("nightly", cron="0 2 * * *", args=ARGS)
    assert not service.set_enabled("nightly", False).enabled
    assert [s.enabled for s in service.list()] == [False]
    assert service.list(enabled_only=True) == []
    assert service.get("nightly").next_run(at(10)) is None
    assert service.set_enabled("nightly", True).enabled

    service.delete("nightly")
    assert service.list() == []
    for call in (
        lambda: service.get("nightly"),
        lambda: service.delete("nightly"),
        lambda: service.runs("nightly"),
        lambda: service.set_enabled("nightly", True),
    ):
        with pytest.raises(NotFound, match="no schedule 'nightly'"):
            call()


# the scheduler -------------------------------------------------------------------------------


def test_a_due_tick_starts_one_job_once(
    db: Database,
    service: ScheduleService,
    scheduler: Scheduler,
    clock: FakeClock,
    launches: Launches,
) -> None:
    service.put("hourly", cron="0 * * * *", args=ARGS)
    assert scheduler.tick().started == []  # 09:30: nothing due yet

    clock.now = at(10, 0, 5)
    result = scheduler.tick()
    assert [(s.schedule, s.tick) for s in result.started] == [("hourly", at(10))]
    assert result.missed == []
    job = JobService(db).get(result.started[0].job_id)
    assert (job.status, job.origin, job.args, job.model) == (
        records.QUEUED,
        "schedule:hourly",
        ARGS,
        "iris@production",
    )
    assert (job.source, job.sink) == ("in.csv", "out.parquet")
    assert launches.calls == [(job.id, ARGS)]

    clock.now = at(10, 0, 35)
    assert scheduler.tick().started == []  # the same tick never again
    assert launches.calls == [(job.id, ARGS)]
    [run] = service.runs("hourly")
    assert (run.tick, run.status, run.job_id, run.job_status) == (at(10), STARTED, job.id, "queued")
    assert service.get("hourly").last_tick == at(10)


def test_ticks_slept_through_are_recorded_missed_and_only_the_latest_runs(
    service: ScheduleService, scheduler: Scheduler, clock: FakeClock, launches: Launches
) -> None:
    service.put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(12, 10)  # the scheduler was down from 09:30 to 12:10

    result = scheduler.tick()

    assert [(m.tick, m.reason) for m in result.missed] == [
        (at(10), NOT_RUNNING),
        (at(11), NOT_RUNNING),
    ]
    assert [s.tick for s in result.started] == [at(12)]
    assert statuses(service, "hourly") == [(at(10), MISSED), (at(11), MISSED), (at(12), STARTED)]
    assert service.runs("hourly")[-1].message == NOT_RUNNING
    assert len(launches.calls) == 1


def test_a_latest_tick_older_than_the_grace_is_missed_too(
    db: Database, service: ScheduleService, clock: FakeClock, launches: Launches
) -> None:
    service.put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(11, 10)
    scheduler = Scheduler(db, launches, lease=None, clock=clock, grace=timedelta(minutes=5))

    result = scheduler.tick()

    assert result.started == []
    assert launches.calls == []
    assert statuses(service, "hourly") == [(at(10), MISSED), (at(11), MISSED)]
    latest = service.runs("hourly")[0]
    assert latest.message == (
        "scheduler was not running at this time; found 10m late, beyond the grace of 5m"
    )
    assert latest.job_id is None


def test_a_long_outage_lists_the_newest_missed_ticks_and_counts_the_rest(
    service: ScheduleService, scheduler: Scheduler, clock: FakeClock
) -> None:
    service.put("minutely", cron="* * * * *", args=ARGS)
    clock.now = at(9, 30, day=2)  # a day: 1,440 ticks

    result = scheduler.tick()

    assert [s.tick for s in result.started] == [at(9, 30, day=2)]
    assert len(result.missed) == 100
    runs = service.runs("minutely", limit=1000)
    assert len(runs) == 101
    oldest = runs[-1]
    assert oldest.tick == at(7, 50, day=2)
    assert oldest.message == (
        f"{NOT_RUNNING}; 1339 earlier ticks since 2030-01-01T09:31:00+00:00 were missed too and "
        "are not listed"
    )
    assert service.get("minutely").last_tick == at(9, 30, day=2)


def test_a_tick_is_skipped_while_the_previous_run_is_queued_or_running(
    db: Database, service: ScheduleService, scheduler: Scheduler, clock: FakeClock
) -> None:
    jobs = JobService(db, clock=clock)
    service.put("often", cron="*/5 * * * *", args=ARGS)
    clock.now = at(9, 35, 5)
    [first] = scheduler.tick().started

    clock.now = at(9, 40, 5)  # its process has not attached yet
    [missed] = scheduler.tick().missed
    assert missed.reason == f"previous run (job {first.job_id}) still queued"

    clock.now = at(9, 45)
    jobs.start(first.job_id, version="iris:1", job_key="k", rows_total=10, resumed_at_row=None)
    clock.now = at(9, 45, 5)  # running, heartbeat 5 seconds old
    [missed] = scheduler.tick().missed
    assert missed.reason == f"previous run (job {first.job_id}) still running"

    jobs.finish(first.job_id, records.SUCCEEDED, Counts(scored=10), "done")
    clock.now = at(9, 50, 5)
    [second] = scheduler.tick().started
    assert second.tick == at(9, 50)
    assert [run.job_status for run in service.runs("often") if run.job_id] == [
        "queued",
        "succeeded",
    ]


def test_a_killed_or_never_started_previous_run_does_not_hold_the_schedule_back(
    db: Database, service: ScheduleService, scheduler: Scheduler, clock: FakeClock
) -> None:
    jobs = JobService(db, clock=clock)
    service.put("often", cron="*/5 * * * *", args=ARGS)
    clock.now = at(9, 35, 5)
    [first] = scheduler.tick().started
    jobs.start(first.job_id, version="iris:1", job_key="k", rows_total=10, resumed_at_row=None)

    clock.now = at(9, 40, 5)  # no heartbeat for five minutes: killed (lost)
    [second] = scheduler.tick().started
    assert jobs.get(first.job_id).state == "lost"

    clock.now = at(9, 45, 5)  # the second never got a process: queued five minutes
    assert scheduler.tick().started == []
    clock.now = at(9, 50, 5)  # ...and after ten it no longer counts
    [third] = scheduler.tick().started
    assert jobs.get(second.job_id).status == records.QUEUED
    assert third.tick == at(9, 50)


def test_disabled_schedules_do_not_run_and_do_not_catch_up_when_enabled(
    service: ScheduleService, scheduler: Scheduler, clock: FakeClock, launches: Launches
) -> None:
    service.put("hourly", cron="0 * * * *", args=ARGS, enabled=False)
    clock.now = at(12, 30)
    assert scheduler.tick().started == []
    assert service.runs("hourly") == []

    service.set_enabled("hourly", True)  # at 12:30: 10:00 to 12:00 are not this run's business
    clock.now = at(13, 0, 5)
    result = scheduler.tick()
    assert [s.tick for s in result.started] == [at(13)]
    assert result.missed == []
    assert statuses(service, "hourly") == [(at(13), STARTED)]
    assert len(launches.calls) == 1


def test_re_applying_a_schedule_keeps_its_due_tick_and_a_change_counts_from_then(
    service: ScheduleService, scheduler: Scheduler, clock: FakeClock
) -> None:
    service.put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(10, 0, 10)  # a deploy script saves it again just after the tick
    assert service.put("hourly", cron="0 * * * *", args=ARGS)[1] == "unchanged"
    assert [s.tick for s in scheduler.tick().started] == [at(10)]

    clock.now = at(11, 0, 10)
    assert service.put("hourly", cron="0 * * * *", args=[*ARGS, "--skip-scored"])[1] == "replaced"
    assert scheduler.tick().started == []  # the 11:00 tick came before the change
    clock.now = at(12, 0, 10)
    assert [s.tick for s in scheduler.tick().started] == [at(12)]


def test_a_scheduler_without_the_lease_does_nothing(
    db: Database, service: ScheduleService, clock: FakeClock, launches: Launches
) -> None:
    service.put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(10)
    assert Lease(db, LEASE_NAME, "other", ttl_seconds=60, clock=clock).acquire()
    clock.now = at(10, 0, 5)
    mine = Lease(db, LEASE_NAME, "mine", ttl_seconds=60, clock=clock)
    scheduler = Scheduler(db, launches, lease=mine, clock=clock)

    assert scheduler.tick().acted is False
    assert service.runs("hourly") == []

    clock.now = at(10, 1, 5)  # the other holder's term ran out: this one takes over
    result = scheduler.tick()
    assert result.acted
    assert [s.tick for s in result.started] == [at(10)]
    scheduler.close()
    current = mine.current()
    assert current is not None
    assert current.expires_at == clock.now  # released


def test_a_launch_that_fails_marks_its_job_failed(
    db: Database, service: ScheduleService, clock: FakeClock
) -> None:
    def broken(job_id: int, args: Sequence[str]) -> None:
        raise OSError("no such file: python")

    service.put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(10, 0, 5)
    [started] = Scheduler(db, broken, lease=None, clock=clock).tick().started

    job = JobService(db).get(started.job_id)
    assert (job.status, job.message) == (
        records.FAILED,
        "could not be launched: no such file: python",
    )
    assert service.runs("hourly")[0].job_status == records.FAILED


class DeadChild:
    pid = 4242

    def poll(self) -> int | None:
        return 1


def test_a_job_whose_process_died_before_it_attached_is_marked_failed(
    db: Database, service: ScheduleService, clock: FakeClock
) -> None:
    service.put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(10, 0, 5)
    scheduler = Scheduler(db, lambda job_id, args: DeadChild(), lease=None, clock=clock)
    [started] = scheduler.tick().started
    assert JobService(db).get(started.job_id).status == records.QUEUED

    scheduler.reap()

    job = JobService(db).get(started.job_id)
    assert job.status == records.FAILED
    assert job.message == "its process (pid 4242) exited with code 1 before it started"


# racing schedulers ---------------------------------------------------------------------------


def test_schedulers_in_threads_never_start_two_jobs_for_one_tick(
    db: Database, service: ScheduleService, clock: FakeClock, launches: Launches
) -> None:
    names = ["a", "b", "c"]
    for name in names:
        service.put(name, cron="*/5 * * * *", args=ARGS)
    # No lease: every thread acts, as schedulers would if the lease were ever split-brained.
    contenders = [Scheduler(db, launches, lease=None, clock=clock) for _ in range(4)]
    started: list[tuple[str, datetime]] = []
    for minute in (35, 40, 45):
        clock.now = at(9, minute, 1)
        barrier = threading.Barrier(len(contenders))
        results: list[Pass] = []

        def act(
            scheduler: Scheduler,
            barrier: threading.Barrier = barrier,
            results: list[Pass] = results,
        ) -> None:
            barrier.wait()
            results.append(scheduler.tick())

        threads = [threading.Thread(target=act, args=(c,)) for c in contenders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == len(contenders)
        started += [(s.schedule, s.tick) for r in results for s in r.started]
        # jobs finish between ticks, so "previous run still running" plays no part
        for job_id, _ in launches.calls:
            if JobService(db).get(job_id).status == records.QUEUED:
                JobService(db).cancel(job_id)

    assert sorted(started) == sorted((n, at(9, m)) for n in names for m in (35, 40, 45))
    assert len(launches.calls) == 9
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 9
    for name in names:
        assert statuses(service, name) == [(at(9, m), STARTED) for m in (35, 40, 45)]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def test_berth_scheduler_once_processes_racing_on_postgresql_start_one_job_per_tick(
    postgres_url: str, settings: Settings, tmp_path: Path
) -> None:
    db = Database(postgres_url)
    db.migrate()
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    service = ScheduleService(db, clock=lambda: two_hours_ago)
    # A job that fails at once (no such model): this test is about who starts it.
    service.put("race", cron="0 * * * *", args=["nowhere", "--source", "a.csv", "--sink", "b.csv"])
    env = _env(BERTH_DATABASE_URL=postgres_url)

    racers = [
        subprocess.Popen(
            [*BERTH, "scheduler", "--once"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]

    for racer, (_, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err
    runs = service.runs("race", limit=100)
    started = [run for run in runs if run.status == STARTED]
    assert started, [out for out, _ in outputs]
    with db.session() as session:
        origins = session.scalars(select(JobRow.origin)).all()
    # One job per started tick (an hour boundary could pass mid-test and add a second tick).
    assert len(origins) == len(started) == len({run.tick for run in started})
    assert set(origins) == {"schedule:race"}
    assert sum(out.count("Started job") for out, _ in outputs) == len(started)
    db.dispose()


# the commands --------------------------------------------------------------------------------


def test_cli_schedule_list_disable_enable_and_unschedule(
    run_both: Run, settings: Settings, cli_mode: Mode
) -> None:
    out = run_both(
        "batch", "schedule", "nightly", "--cron", "0 2 * * *", "--timezone", "Europe/Berlin", *ARGS
    )
    assert out.code == 0, out.err
    assert "Created schedule nightly: 0 2 * * * (Europe/Berlin)" in out.out
    assert "runs: berth batch run iris@production --source in.csv --sink out.parquet" in out.out
    [upcoming] = [line for line in out.out.splitlines() if "next:" in line]
    assert len(re.findall(r"\d{4}-\d\d-\d\d 02:00 CES?T", upcoming)) == 3

    [listed] = json.loads(run_both("batch", "schedules", "--json").out)
    assert (listed["name"], listed["args"], listed["enabled"]) == ("nightly", ARGS, True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT02:00:00\+0[12]:00", listed["next_run"])
    assert listed["last_run"] is None
    table = run_both("batch", "schedules").out
    assert "nightly" in table
    assert "0 2 * * *" in table

    again = run_both(
        "batch", "schedule", "nightly", "--cron", "0 2 * * *", "--timezone", "Europe/Berlin", *ARGS
    )
    assert "Unchanged schedule nightly" in again.out

    assert "Disabled schedule nightly" in run_both("batch", "disable", "nightly").out
    assert "disabled" in run_both("batch", "schedules").out
    enabled = run_both("batch", "enable", "nightly")
    assert re.search(r"Enabled schedule nightly; next run \d{4}-\d\d-\d\d 02:00", enabled.out)

    assert "Removed schedule nightly" in run_both("batch", "unschedule", "nightly").out
    gone = run_both("batch", "runs", "nightly")
    assert gone.code == 1
    assert "no schedule 'nightly'" in gone.err
    missing = run_both("batch", "disable", "nightly")
    assert missing.code == 1
    assert "no schedule 'nightly'" in missing.err

    # Every change was audited, as the local user or the remote key; refusals too.
    db = Registry.from_settings(settings).db
    events = [e for e in reversed(AuditLog(db).list()) if e.action.startswith("schedule.")]
    db.dispose()
    assert [(e.action, e.target, e.outcome) for e in events] == [
        ("schedule.set", "nightly", "ok"),
        ("schedule.set", "nightly", "ok"),
        ("schedule.disable", "nightly", "ok"),
        ("schedule.enable", "nightly", "ok"),
        ("schedule.delete", "nightly", "ok"),
        ("schedule.disable", "nightly", "refused"),
    ]
    assert [e.detail["outcome"] for e in events[:2] if e.detail] == ["created", "unchanged"]
    assert {e.actor for e in events} == {cli_mode.actor}


def test_cli_refuses_a_schedule_that_could_not_run(run_both: Run) -> None:
    missing_sink = run_both(
        "batch", "schedule", "nightly", "--cron", "0 2 * * *", "iris", "--source", "in.csv"
    )
    assert missing_sink.code == 1
    assert "invalid job arguments" in missing_sink.err
    assert "--sink" in missing_sink.err

    bad_cron = run_both("batch", "schedule", "nightly", "--cron", "0 2 * *", *ARGS)
    assert bad_cron.code == 1
    assert "has 4 fields" in bad_cron.err

    bad_zone = run_both("batch", "schedule", "nightly", "--cron", "@daily", "--timezone", "Mars")
    assert bad_zone.code == 1
    assert "unknown time zone 'Mars'" in bad_zone.err
    bad_name = run_both("batch", "schedule", "-x", "--cron", "@daily", *ARGS)
    assert bad_name.code != 0
    assert run_both("batch", "schedule", "a b", "--cron", "@daily", *ARGS).code == 1
    with_job = run_both("batch", "schedule", "nightly", "--cron", "@daily", *ARGS, "--job", "3")
    assert with_job.code == 1
    assert "--job is set by the scheduler" in with_job.err

    disabled = run_both("batch", "schedule", "paused", "--cron", "@daily", "--disabled", *ARGS)
    assert disabled.code == 0, disabled.err
    assert "disabled; would run" in disabled.out
    assert [s["name"] for s in json.loads(run_both("batch", "schedules", "--json").out)] == [
        "paused"
    ]


def test_cli_runs_shows_started_and_missed_ticks(run_both: Run, settings: Settings) -> None:
    db = Registry.from_settings(settings).db
    clock = FakeClock(at(9, 30))
    ScheduleService(db, clock=clock).put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(11, 0, 5)
    Scheduler(db, Launches(), lease=None, clock=clock).tick()

    table = run_both("batch", "runs", "hourly").out
    cells = r"[\s│]+"  # between rich's table cells
    assert re.search(rf"2030-01-01 11:00 UTC{cells}started{cells}1{cells}queued", table)
    assert re.search(rf"10:00 UTC{cells}missed{cells}-{cells}-{cells}scheduler was not", table)
    rows = json.loads(run_both("batch", "runs", "hourly", "--json").out)
    assert [(r["status"], r["job_id"]) for r in rows] == [(STARTED, 1), (MISSED, None)]
    assert "job 1 queued" in run_both("batch", "schedules").out
    db.dispose()


@pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)
def test_cli_prints_the_same_in_both_modes(
    run_both: Run, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Registry.from_settings(settings).db
    clock = FakeClock(at(9, 30))
    ScheduleService(db, clock=clock).put("hourly", cron="0 * * * *", args=ARGS)
    clock.now = at(11, 0, 5)
    Scheduler(db, Launches(), lease=None, clock=clock).tick()
    db.dispose()
    zoned = ["--cron", "30 1 * * 1-5", "--timezone", "America/New_York", *ARGS]
    remote = run_both("batch", "schedule", "weekdays", *zoned)
    assert remote.code == 0, remote.err
    again = assert_same_output(run_both, monkeypatch, None, "batch", "schedule", "weekdays", *zoned)
    assert "Unchanged schedule weekdays: 30 1 * * 1-5 (America/New_York)" in again.out
    assert re.search(r"next: \d{4}-\d\d-\d\d 01:30 E[SD]T,", again.out)
    for command in (
        ["batch", "schedules"],
        ["batch", "schedules", "--json"],
        ["batch", "runs", "hourly"],
        ["batch", "runs", "hourly", "--json", "--limit", "1"],
        ["batch", "runs", "weekdays"],
        ["batch", "runs", "ghost"],
        ["batch", "runs", "hourly", "--limit", "0"],
        ["batch", "schedule", "bad", "--cron", "0 2 * *", *ARGS],
        ["batch", "schedule", "bad", "--cron", "@daily", "iris"],
        ["batch", "unschedule", "ghost"],
    ):
        assert_same_output(run_both, monkeypatch, None, *command)


def test_sigterm_stops_berth_scheduler_cleanly_and_releases_the_lease(settings: Settings) -> None:
    db = Registry.from_settings(settings).db
    process = subprocess.Popen(
        [*BERTH, "scheduler", "--interval", "1s"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    observer = Lease(db, LEASE_NAME, "observer")
    try:
        deadline = time.monotonic() + 60
        while (held := observer.current()) is None or held.expires_at <= datetime.now(UTC):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the scheduler never took the lease"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "holding the batch-scheduler lease" in err
    released = observer.current()
    assert released is not None
    assert released.expires_at <= datetime.now(UTC)
    db.dispose()


# end to end ----------------------------------------------------------------------------------


def test_berth_scheduler_once_launches_a_real_batch_job_that_succeeds(
    sqlite_registry: Registry, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    register_iris(sqlite_registry, iris_files, aliases=("production",))
    frame = pd.DataFrame(np.load(iris_files[1]), columns=["a", "b", "c", "d"])
    frame.insert(0, "id", range(len(frame)))
    frame.to_csv(tmp_path / "in.csv", index=False)
    args = ["iris@production", "--source", str(tmp_path / "in.csv")]
    args += ["--sink", str(tmp_path / "out.parquet")]
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    service = ScheduleService(sqlite_registry.db, clock=lambda: two_hours_ago)
    service.put("iris-hourly", cron="0 * * * *", args=args)

    done = berth(_env(), "scheduler", "--once")

    assert done.returncode == 0, done.stderr
    match = re.search(r"Started job (\d+) for iris-hourly", done.stdout)
    assert match, done.stdout
    job = _finished(JobService(sqlite_registry.db), int(match[1]))
    log = Path(os.environ["BERTH_HOME"], "jobs", f"{job.id}.log")
    assert job.status == records.SUCCEEDED, f"{job.message}\n{log.read_text()}"
    assert job.origin == "schedule:iris-hourly"
    assert job.counts.scored == len(frame)
    scores = _read_parts(tmp_path / "out.parquet")
    assert sorted(scores["id"]) == list(range(len(frame)))
    latest, earlier = service.runs("iris-hourly")
    assert (latest.status, latest.job_id, latest.job_status) == (STARTED, job.id, "succeeded")
    assert (earlier.status, earlier.message) == (MISSED, NOT_RUNNING)


def _finished(jobs: JobService, job_id: int) -> records.JobInfo:
    deadline = time.monotonic() + 120
    while (job := jobs.get(job_id)).status not in records.FINISHED:
        assert time.monotonic() < deadline, f"job {job_id} is still {job.status}"
        time.sleep(0.2)
    return job


def _read_parts(folder: Path) -> pd.DataFrame:
    """A file sink's result: the parts its manifest names."""
    from berth.jobs.file_sinks import MANIFEST

    manifest = json.loads((folder / MANIFEST).read_text())
    return pd.concat([pd.read_parquet(folder / part["file"]) for part in manifest["parts"]])
