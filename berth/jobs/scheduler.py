"""`berth scheduler`: starts the jobs of schedules (batch runs, backups) when their ticks fall due.

Any number of schedulers may run; only the holder of the database lease `batch-scheduler` acts,
and a successor takes over within the lease's term when the holder dies. Each pass, for each
enabled schedule, the ticks due are those since the last handled tick (berth.jobs.schedules):

- the latest due tick runs if it is at most `grace` old; every earlier one is recorded `missed`
  ("scheduler was not running at this time"): a scheduler that was down overnight starts the
  job once, not once per tick it slept through;
- the latest is recorded `missed` too when it is older than the grace, when the schedule's
  previous job is still queued or running, or when its arguments no longer parse;
- running a tick is: claim it (insert its schedule_runs row, which the database allows once
  per tick, so even two schedulers that both believe they hold the lease never start two jobs
  for one tick), create the job record (origin `schedule:NAME`), launch it: `berth batch run
  ARGS --job ID` for a batch schedule, `berth backup create ARGS --job ID` for a backup one.

Previous run still running: the tick is skipped (recorded `missed`, "previous run (job N) still
running"), not queued behind it: runs of one schedule share a job key, so a second run would
only wait for or fight over the first one's work, and a backlog of late runs helps nobody. A
job counts as running while `queued` (at most QUEUED_STALE_SECONDS: a process that never
attached is not waited for) or `running` with a live heartbeat (a killed job does not block).

Jobs run as their own processes (berth.jobs.launch): stopping the scheduler leaves them running.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from berth.errors import BerthError, InvalidInput
from berth.jobs import records
from berth.jobs.config import JobsConfig
from berth.jobs.kinds import BATCH, JobFields, job_fields
from berth.jobs.records import Counts, JobService
from berth.jobs.schedules import MISSED, STARTED, ScheduleInfo, ScheduleService, when
from berth.store.db import Database
from berth.store.lease import Lease

log = logging.getLogger("berth.jobs.scheduler")

LEASE_NAME = "batch-scheduler"
DEFAULT_GRACE = timedelta(hours=1)
DEFAULT_INTERVAL = timedelta(seconds=30)
QUEUED_STALE_SECONDS = 600.0
"""A job queued this long never got a process; it no longer holds its schedule back."""
MAX_LISTED_MISSED = 100
"""Missed ticks recorded one by one per pass; older ones are summed up in the oldest's message."""
NOT_RUNNING = "scheduler was not running at this time; only the latest due tick runs"


class Child(Protocol):
    """A launched job process (subprocess.Popen), polled so it is reaped when it exits."""

    pid: int

    def poll(self) -> int | None: ...


class Launcher(Protocol):
    """Starts the job `job_id`: its kind's command (`berth batch run`, `berth backup create`)
    with `args` and `--job ID`."""

    def __call__(self, job_id: int, args: Sequence[str], kind: str = BATCH) -> Child | None: ...


def process_launcher(config: JobsConfig) -> Launcher:
    """The real launcher: each job a detached process logging to `<log_dir>/ID.log`."""
    from berth.jobs.launch import launch

    def start(job_id: int, args: Sequence[str], kind: str = BATCH) -> Child | None:
        return launch(config, job_id, args, kind=kind)

    return start


def lease_ttl(interval: timedelta) -> float:
    """A term that survives two missed renewals, so a slow pass does not hand over the lease."""
    return max(30.0, 3 * interval.total_seconds())


@dataclass(frozen=True)
class Started:
    schedule: str
    tick: datetime
    job_id: int


@dataclass(frozen=True)
class Missed:
    schedule: str
    tick: datetime
    reason: str


@dataclass
class Pass:
    """What one scheduler pass did."""

    acted: bool
    """False when another scheduler holds the lease."""
    started: list[Started] = field(default_factory=list)
    missed: list[Missed] = field(default_factory=list)


class Scheduler:
    """Runs due schedule ticks. `lease=None` acts without one (tests, a single process)."""

    def __init__(
        self,
        db: Database,
        launcher: Launcher,
        *,
        lease: Lease | None,
        clock: Callable[[], datetime] | None = None,
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.schedules = ScheduleService(db, clock=self.clock)
        self.jobs = JobService(db, clock=self.clock)
        self.launcher = launcher
        self.lease = lease
        self.grace = grace
        self._children: dict[int, Child] = {}
        self._acting: bool | None = None

    # the loop ----------------------------------------------------------------------------

    def run(self, interval: timedelta, stop: threading.Event) -> None:
        """Pass after pass, `interval` apart, until `stop` is set; then release the lease."""
        try:
            while not stop.is_set():
                try:
                    self.reap()
                    self.tick()
                except Exception:
                    log.exception("scheduler pass failed; trying again in %s", interval)
                stop.wait(interval.total_seconds())
        finally:
            self.close()

    def close(self) -> None:
        """Give up the lease so a successor need not wait for its term to end."""
        if self.lease is not None:
            self.lease.release()

    def reap(self) -> None:
        """Collect launched jobs that exited (no zombies); a job whose process died before it
        attached to its record would stay `queued` forever, so mark it failed."""
        for job_id, child in list(self._children.items()):
            code = child.poll()
            if code is None:
                continue
            del self._children[job_id]
            if code != 0 and self.jobs.get(job_id).status == records.QUEUED:
                message = f"its process (pid {child.pid}) exited with code {code} before it started"
                self.jobs.finish(job_id, records.FAILED, Counts(), message)
                log.error("job %d: %s", job_id, message)

    # one pass ----------------------------------------------------------------------------

    def tick(self) -> Pass:
        """One pass over the enabled schedules, if this scheduler may act."""
        if not self._may_act():
            return Pass(acted=False)
        now = self.clock()
        result = Pass(acted=True)
        for info in self.schedules.list(enabled_only=True):
            try:
                self._handle(info, now, result)
            except BerthError as exc:
                log.error("schedule %s cannot run: %s", info.name, exc.message)
            except Exception:
                log.exception("schedule %s: the scheduler failed to handle it", info.name)
        return result

    def _may_act(self) -> bool:
        if self.lease is None:
            return True
        acting = self.lease.acquire()
        if acting != self._acting:  # say it when it changes, not every pass
            if acting:
                log.info(
                    "holding the %s lease as %s; running due schedules",
                    LEASE_NAME,
                    self.lease.holder,
                )
            else:
                log.info(
                    "not holding the %s lease (another scheduler has it, or the database is "
                    "out of reach); standing by",
                    LEASE_NAME,
                )
            self._acting = acting
        return acting

    def _handle(self, info: ScheduleInfo, now: datetime, result: Pass) -> None:
        cron = info.expression
        zone = cron.zone
        due = _collect(cron.ticks(info.counted_from, now))
        if due is None:
            return
        decision = self._decide(info, due.latest, now)
        status, reason = (STARTED, None) if isinstance(decision, JobFields) else (MISSED, decision)
        missed = due.missed()
        if not self.schedules.record(info.name, missed, due.latest, status, reason):
            log.info(
                "schedule %s: the tick of %s was handled by another scheduler",
                info.name,
                when(due.latest, zone),
            )
            return
        result.missed += [Missed(info.name, tick, why) for tick, why in missed]
        _log_missed(info.name, zone, missed)
        if isinstance(decision, JobFields):
            result.started.append(self._start(info, due.latest, decision, zone))
            return
        result.missed.append(Missed(info.name, due.latest, decision))
        log.warning(
            "schedule %s: missed the tick of %s: %s", info.name, when(due.latest, zone), decision
        )

    def _decide(self, info: ScheduleInfo, tick: datetime, now: datetime) -> JobFields | str:
        """The job to run for the latest due tick, or why it is missed instead."""
        late = now - tick
        if late > self.grace:
            return (
                f"scheduler was not running at this time; found {_span(late)} late, "
                f"beyond the grace of {_span(self.grace)}"
            )
        try:
            fields = job_fields(info.kind, info.args)
        except InvalidInput as exc:
            return f"the stored job arguments are invalid: {exc.message}"
        busy = self._previous_job(info.name, now)
        if busy is not None:
            return f"previous run (job {busy.id}) still {busy.state}"
        return fields

    def _previous_job(self, name: str, now: datetime) -> records.JobInfo | None:
        """The schedule's last job, if it is still queued or running."""
        job_id = self.schedules.last_job(name)
        if job_id is None:
            return None
        job = self.jobs.get(job_id)
        if job.state == records.RUNNING:
            return job
        waited = (now - job.created_at).total_seconds()
        if job.state == records.QUEUED and waited < QUEUED_STALE_SECONDS:
            return job
        return None

    def _start(
        self, info: ScheduleInfo, tick: datetime, fields: JobFields, zone: ZoneInfo
    ) -> Started:
        job = self.jobs.create(
            job_key=fields.job_key,
            model=fields.model,
            source=fields.source,
            sink=fields.sink,
            args=info.args,
            origin=f"schedule:{info.name}",
            kind=fields.kind,
        )
        self.schedules.attach_job(info.name, tick, job.id)
        try:
            # A batch job is launched as before kinds existed (launchers that only take the
            # id and arguments still work for batch schedules).
            if fields.kind == BATCH:
                child = self.launcher(job.id, info.args)
            else:
                child = self.launcher(job.id, info.args, kind=fields.kind)
        except Exception as exc:  # OSError and the like: the record must not stay queued
            log.exception("schedule %s: could not launch job %d", info.name, job.id)
            self.jobs.finish(job.id, records.FAILED, Counts(), f"could not be launched: {exc}")
        else:
            if child is not None:
                self._children[job.id] = child
            log.info(
                "schedule %s: started job %d for the tick of %s",
                info.name,
                job.id,
                when(tick, zone),
            )
        return Started(info.name, tick, job.id)


@dataclass(frozen=True)
class _Due:
    latest: datetime
    earlier: list[datetime]
    """The most recent earlier ticks, at most MAX_LISTED_MISSED of them, oldest first."""
    unlisted: int
    first: datetime

    def missed(self) -> list[tuple[datetime, str]]:
        rows = [(tick, NOT_RUNNING) for tick in self.earlier]
        if self.unlisted and rows:
            rows[0] = (
                rows[0][0],
                f"{NOT_RUNNING}; {self.unlisted} earlier ticks since "
                f"{self.first.isoformat()} were missed too and are not listed",
            )
        return rows


def _collect(ticks: Iterable[datetime]) -> _Due | None:
    """The due ticks, keeping only the newest ones: a per-minute schedule whose scheduler was
    down for a month has 40,000, and one row each would bury the history."""
    kept: deque[datetime] = deque(maxlen=MAX_LISTED_MISSED + 1)
    count = 0
    first: datetime | None = None
    for tick in ticks:
        first = first or tick
        kept.append(tick)
        count += 1
    if first is None:
        return None
    latest = kept.pop()
    return _Due(latest=latest, earlier=list(kept), unlisted=count - 1 - len(kept), first=first)


def _log_missed(name: str, zone: ZoneInfo, missed: list[tuple[datetime, str]]) -> None:
    if len(missed) > 3:
        log.warning(
            "schedule %s: recorded %d missed ticks, %s to %s: %s",
            name,
            len(missed),
            when(missed[0][0], zone),
            when(missed[-1][0], zone),
            NOT_RUNNING,
        )
        return
    for tick, why in missed:
        log.warning("schedule %s: missed the tick of %s: %s", name, when(tick, zone), why)


def _span(duration: timedelta) -> str:
    """A duration as people read it: 45s, 12m, 3h 5m, 2d 4h."""
    seconds = int(duration.total_seconds())
    parts = [
        (seconds // 86400, "d"),
        (seconds % 86400 // 3600, "h"),
        (seconds % 3600 // 60, "m"),
        (seconds % 60, "s"),
    ]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return " ".join(shown[:2]) or "0s"
