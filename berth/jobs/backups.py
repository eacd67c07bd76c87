"""Backups as recorded jobs: every `berth backup create` is a job of kind `backup`.

The command runs its backup inside `recorded_backup`, which creates the job record (or attaches
to the one the scheduler queued), marks it running with a heartbeat while the backup copies
(so `berth jobs list` tells a live backup from a killed one), and ends it `succeeded` or
`failed` with the backup's report as its summary. `last_success` is what the server's
`berth_backup_last_success_timestamp_seconds` gauge reads.

This glue lives in berth.jobs, above berth.backup: the backup itself knows nothing of jobs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from berth.errors import BerthError, Conflict
from berth.jobs.kinds import BACKUP, job_fields
from berth.jobs.records import FAILED, HEARTBEAT_SECONDS, SUCCEEDED, Counts, JobInfo, JobService
from berth.store.db import Database
from berth.store.tables import JobRow

log = logging.getLogger("berth.jobs.backups")


class BackupRecord:
    """The job record of one running backup; `report` gives it the backup's report."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.summary: dict[str, Any] | None = None

    def report(self, report: dict[str, Any]) -> None:
        self.summary = report


@contextmanager
def recorded_backup(
    db: Database, args: Sequence[str], *, origin: str = "cli", job_id: int | None = None
) -> Iterator[BackupRecord]:
    """Record the backup run in the block as a job: a new record (origin `cli`,
    `schedule:NAME`), or the queued record `job_id` a scheduler created. A failure in the
    block (any exception) ends the job `failed` with its message, and is raised again."""
    fields = job_fields(BACKUP, args)
    service = JobService(db)
    if job_id is None:
        job = service.create(
            kind=BACKUP, job_key=fields.job_key, model=fields.model, source=fields.source,
            sink=fields.sink, args=list(args), origin=origin,
        )  # fmt: skip
    else:
        job = service.get(job_id)
        if job.kind != BACKUP:
            raise Conflict(
                f"job {job_id} is a {job.kind} job, not a backup; `berth jobs show {job_id}` "
                "prints the command that runs it"
            )
    job = service.start(
        job.id, version=None, job_key=fields.job_key, rows_total=None, resumed_at_row=None
    )
    record = BackupRecord(job)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(service, job.id, stop), name=f"berth-backup-{job.id}", daemon=True
    )
    beat.start()
    try:
        yield record
    except BaseException as exc:
        _stop(stop, beat)
        message = exc.message if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted (Ctrl-C); no manifest was written for this backup"
        service.finish(job.id, FAILED, Counts(), message, summary=record.summary)
        raise
    _stop(stop, beat)
    service.finish(job.id, SUCCEEDED, Counts(), _describe(record.summary), summary=record.summary)


def _heartbeat(service: JobService, job_id: int, stop: threading.Event) -> None:
    """Prove the backup alive about once a second; a database hiccup must not stop the backup."""
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            service.heartbeat(job_id, Counts())
        except Exception:
            log.warning("backup job %d: could not write its heartbeat", job_id, exc_info=True)


def _stop(stop: threading.Event, beat: threading.Thread) -> None:
    stop.set()
    beat.join()


def _describe(report: dict[str, Any] | None) -> str | None:
    if report is None:
        return None
    destinations = report.get("destinations", [])
    copied = sum(d.get("bytes_copied", 0) for d in destinations)
    return (
        f"backup {report.get('snapshot')}: {report.get('artifacts')} artifacts, complete at "
        f"{len(destinations)} destination(s), {copied} bytes copied"
    )


def last_success(db: Database) -> datetime | None:
    """When the newest succeeded backup ended (one lookup in ix_jobs_kind_status_finished)."""
    query = select(func.max(JobRow.finished_at)).where(
        JobRow.kind == BACKUP, JobRow.status == SUCCEEDED
    )
    with db.session() as session:
        found: datetime | None = session.scalar(query)
    return found
