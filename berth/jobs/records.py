"""Every batch job and backup is recorded in the registry: `berth jobs`, `/api/v1/jobs` and schedules read it.

A job row is created `queued` (by the CLI, the admin API or the scheduler), turns `running` when
a process attaches to it, reports its counts about once a second (the heartbeat), and ends
`succeeded`, `failed` or `cancelled`. A running job whose heartbeat stopped was killed; the next
run with the same job key resumes its work and marks it `failed` with that reason.
"""

from __future__ import annotations

import builtins
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from berth.errors import Conflict, InvalidInput, NotFound

# The state names are defined in berth.jobs.states (which `berth --help` reads without
# SQLAlchemy) and re-exported here for the code that reads them from the records.
from berth.jobs.states import ACTIVE as ACTIVE
from berth.jobs.states import CANCELLED as CANCELLED
from berth.jobs.states import FAILED as FAILED
from berth.jobs.states import FINISHED as FINISHED
from berth.jobs.states import LOST as LOST
from berth.jobs.states import MAX_LIMIT as MAX_LIMIT
from berth.jobs.states import QUEUED as QUEUED
from berth.jobs.states import RUNNING as RUNNING
from berth.jobs.states import STATES as STATES
from berth.jobs.states import SUCCEEDED as SUCCEEDED
from berth.store.audit import AuditLog, event
from berth.store.db import Database
from berth.store.tables import JobRow

HEARTBEAT_SECONDS = 1.0
"""How often a running job writes its counts (and so proves it is alive)."""
LOST_AFTER_SECONDS = 30.0
"""A running job silent this long is taken as killed (shown as `lost`)."""


@dataclass(frozen=True)
class Counts:
    scored: int = 0
    skipped: int = 0
    rejected: int = 0
    rows_per_second: float = 0.0


@dataclass(frozen=True)
class JobInfo:
    id: int
    kind: str
    status: str
    job_key: str
    model: str
    version: str | None
    source: str
    sink: str
    args: list[str]
    origin: str
    rows_total: int | None
    counts: Counts
    resumed_at_row: int | None
    message: str | None
    cancel_requested: bool
    host: str
    pid: int | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    now: datetime
    summary: dict[str, Any] | None = None
    """What the run that ended it reported (`Summary.to_dict()`); None for a job that ended
    otherwise (an error, cancelled before it started) or is not over."""

    @property
    def lost(self) -> bool:
        """Running, but silent for longer than a live job ever is: it was killed."""
        if self.status != RUNNING:
            return False
        last = self.heartbeat_at or self.started_at or self.created_at
        return (self.now - last).total_seconds() > LOST_AFTER_SECONDS

    @property
    def state(self) -> str:
        """The status, or `lost` for a running job that stopped reporting."""
        return "lost" if self.lost else self.status

    @property
    def done_rows(self) -> int:
        return self.counts.scored + self.counts.skipped + self.counts.rejected

    @property
    def progress(self) -> float | None:
        """Share of the source handled so far, 0..1; None when the row count is unknown."""
        if not self.rows_total:
            return 1.0 if self.status == SUCCEEDED else None
        return min(1.0, self.done_rows / self.rows_total)

    @property
    def eta_seconds(self) -> float | None:
        if self.status != RUNNING or not self.rows_total or self.counts.rows_per_second <= 0:
            return None
        left = max(0, self.rows_total - self.done_rows)
        return left / self.counts.rows_per_second

    @property
    def duration_seconds(self) -> float | None:
        """From its start to its end: now while running, its last heartbeat once lost."""
        if self.started_at is None:
            return None
        end = self.finished_at or (self.heartbeat_at if self.lost else None) or self.now
        return max(0.0, (end - self.started_at).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.state,
            "model": self.model,
            "version": self.version,
            "source": self.source,
            "sink": self.sink,
            "args": list(self.args),
            "origin": self.origin,
            "rows_total": self.rows_total,
            "rows_scored": self.counts.scored,
            "rows_skipped": self.counts.skipped,
            "rows_rejected": self.counts.rejected,
            "rows_per_second": round(self.counts.rows_per_second, 1),
            "progress": None if self.progress is None else round(self.progress, 4),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "resumed_at_row": self.resumed_at_row,
            "message": self.message,
            "cancel_requested": self.cancel_requested,
            "host": self.host,
            "pid": self.pid,
            "created_at": self.created_at.isoformat(),
            "started_at": _iso(self.started_at),
            "heartbeat_at": _iso(self.heartbeat_at),
            "finished_at": _iso(self.finished_at),
            "duration_seconds": _rounded(self.duration_seconds),
        }


class JobService:
    """Job records in the registry database."""

    def __init__(self, db: Database, clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self._clock = clock or (lambda: datetime.now(UTC))

    def create(
        self,
        *,
        job_key: str,
        model: str,
        source: str,
        sink: str,
        args: Sequence[str],
        origin: str = "cli",
        kind: str = "batch",
    ) -> JobInfo:
        now = self._clock()
        with self.db.session() as session:
            row = JobRow(
                kind=kind,
                status=QUEUED,
                job_key=job_key,
                model=model,
                source=source,
                sink=sink,
                args=list(args),
                origin=origin,
                rows_scored=0,
                rows_skipped=0,
                rows_rejected=0,
                rows_per_second=0.0,
                cancel_requested=False,
                host="",
                created_at=now,
            )
            session.add(row)
            session.flush()
            return self._info(row)

    def start(
        self,
        job_id: int,
        *,
        version: str | None,
        job_key: str,
        rows_total: int | None,
        resumed_at_row: int | None,
    ) -> JobInfo:
        """Attach this process to a queued job; refuses one that already ran or was cancelled."""
        now = self._clock()
        with self.db.session(write=True) as session:
            row = _row(session, job_id, lock=True)
            if row.status != QUEUED or row.cancel_requested:
                state = "cancelled" if row.cancel_requested else row.status
                again = (
                    "`berth backup create ...`"
                    if row.kind == "backup"
                    else "`berth batch run ...` (it resumes where an interrupted run stopped)"
                )
                raise Conflict(f"job {job_id} is {state}, not queued; start a new one with {again}")
            row.status = RUNNING
            row.version = version
            row.job_key = job_key
            row.rows_total = rows_total
            row.resumed_at_row = resumed_at_row
            row.host = socket.gethostname()[:128]
            row.pid = os.getpid()
            row.started_at = now
            row.heartbeat_at = now
            return self._info(row)

    def heartbeat(self, job_id: int, counts: Counts, rows_total: int | None = None) -> bool:
        """Record progress; True when someone asked the job to stop (`berth jobs cancel`)."""
        values: dict[str, Any] = {
            "rows_scored": counts.scored,
            "rows_skipped": counts.skipped,
            "rows_rejected": counts.rejected,
            "rows_per_second": counts.rows_per_second,
            "heartbeat_at": self._clock(),
        }
        if rows_total is not None:
            values["rows_total"] = rows_total
        with self.db.session() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
            requested = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
        return bool(requested)

    def finish(
        self,
        job_id: int,
        status: str,
        counts: Counts,
        message: str | None,
        summary: dict[str, Any] | None = None,
    ) -> JobInfo:
        now = self._clock()
        with self.db.session() as session:
            row = _row(session, job_id)
            row.status = status
            row.summary = summary
            row.rows_scored = counts.scored
            row.rows_skipped = counts.skipped
            row.rows_rejected = counts.rejected
            row.rows_per_second = counts.rows_per_second
            row.message = message
            row.heartbeat_at = now
            row.finished_at = now
            return self._info(row)

    def get(self, job_id: int) -> JobInfo:
        with self.db.session() as session:
            return self._info(_row(session, job_id))

    def list(self, limit: int = 50, status: str | None = None) -> list[JobInfo]:
        query = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
        if status is not None:
            query = query.where(JobRow.status == status)
        with self.db.session() as session:
            return [self._info(row) for row in session.scalars(query)]

    def cancel(self, job_id: int) -> JobInfo:
        """Ask a job to stop after its current chunk; a queued job is cancelled at once.

        What a cancelled job committed stays committed; running it again resumes from there.
        """
        now = self._clock()
        with self.db.session(write=True) as session:
            row = _row(session, job_id, lock=True)
            if row.status in FINISHED:
                raise Conflict(f"job {job_id} already {row.status}; nothing to cancel")
            if row.kind == "backup" and row.status == RUNNING:
                # A backup has no point to stop at cleanly; killed, it writes no manifest and
                # leaves the earlier backups as they were.
                raise Conflict(
                    f"backup job {job_id} is running and cannot stop halfway; it ends by itself, "
                    f"or stop its process (pid {row.pid} on {row.host or 'its host'}): a killed "
                    "backup writes no manifest and earlier backups stay intact"
                )
            row.cancel_requested = True
            if row.status == QUEUED:
                row.status = CANCELLED
                row.message = "cancelled before it started"
                row.finished_at = now
            return self._info(row)

    def interrupted(self, job_key: str, exclude: int) -> builtins.list[JobInfo]:
        """Earlier runs of the same job that are still marked running: killed or still alive."""
        query = select(JobRow).where(
            JobRow.job_key == job_key, JobRow.status == RUNNING, JobRow.id != exclude
        )
        with self.db.session() as session:
            return [self._info(row) for row in session.scalars(query)]

    def mark_lost(self, job_id: int, resumed_by: int) -> None:
        """Close a killed run's record once a new run has taken over its work."""
        now = self._clock()
        with self.db.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == RUNNING)
                .values(
                    status=FAILED,
                    message=f"stopped reporting (killed?); job {resumed_by} resumed its work",
                    finished_at=now,
                )
            )

    def _info(self, row: JobRow) -> JobInfo:
        return JobInfo(
            id=row.id,
            kind=row.kind,
            status=row.status,
            job_key=row.job_key,
            model=row.model,
            version=row.version,
            source=row.source,
            sink=row.sink,
            args=list(row.args or []),
            origin=row.origin,
            rows_total=row.rows_total,
            counts=Counts(
                row.rows_scored, row.rows_skipped, row.rows_rejected, row.rows_per_second
            ),
            resumed_at_row=row.resumed_at_row,
            message=row.message,
            cancel_requested=row.cancel_requested,
            host=row.host,
            pid=row.pid,
            created_at=row.created_at,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            finished_at=row.finished_at,
            now=self._clock(),
            summary=row.summary,
        )


def _row(session: Session, job_id: int, lock: bool = False) -> JobRow:
    query = select(JobRow).where(JobRow.id == job_id)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).one_or_none()
    if row is None:
        raise NotFound(f"no job {job_id}; `berth jobs list` shows the recorded jobs")
    return row


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# queries shared by `berth jobs` and the admin API ----------------------------------------------

_EVERY_RUNNING = 10_000
"""Running records fetched to tell live from lost: each is a process, so there are few."""


def find_jobs(service: JobService, status: str | None = None, limit: int = 50) -> list[JobInfo]:
    """Jobs newest first, at most `limit`; `running` and `lost` split the running records by
    whether their heartbeat is recent, as the status column shows them."""
    if status is not None and status not in STATES:
        raise InvalidInput(f"status {status!r} is not one of {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    if status not in (RUNNING, LOST):
        return service.list(limit=limit, status=status)
    running = service.list(limit=_EVERY_RUNNING, status=RUNNING)
    return [job for job in running if job.state == status][:limit]


def cancel_job(
    db: Database, job_id: int, actor: str | None = None, address: str | None = None
) -> JobInfo:
    """Cancel a job (see `JobService.cancel`) and audit who did; a refusal is audited too."""
    audit = AuditLog(db)
    what = event(actor, address, "job.cancel", f"job {job_id}")
    with audit.refusals(what):
        info = JobService(db).cancel(job_id)
    audit.record(event(actor, address, "job.cancel", f"job {job_id}", {"status": info.state}))
    return info
