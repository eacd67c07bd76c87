"""Schedules: a job run on a cron schedule, stored in the registry, with every tick's fate.

A schedule has a kind (berth.jobs.kinds): `batch` stores `berth batch run` arguments, `backup`
stores `berth backup create` arguments; either is checked as its command checks them when it is
saved, so a stored schedule always describes a job that command accepts. It has a cron
expression in an IANA time zone. `berth scheduler` (berth.jobs.scheduler) runs its ticks; each tick it handles is
one schedule_runs row, `started` (with its job) or `missed` (with why).

Ticks are counted from the later of the last handled tick and the last change to the schedule
(creation, replacement, enabling or disabling): ticks from before a change, or from while the
schedule was disabled, are neither run nor recorded. Saving a schedule exactly as it is stored
changes nothing, so a deploy script can re-apply its schedules without losing a due tick.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from berth.errors import Conflict, InvalidInput, NotFound
from berth.jobs.cron import Cron
from berth.jobs.kinds import BATCH, check_kind, job_fields, set_per_run
from berth.jobs.records import JobService
from berth.store import audit
from berth.store.db import Database
from berth.store.tables import ScheduleRow, ScheduleRunRow
from berth.store.upsert import conflict_insert

if TYPE_CHECKING:
    from berth.store.upsert import ConflictInsert

STARTED = "started"
MISSED = "missed"

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
UPCOMING = 3
"""How many run times a new or replaced schedule is shown with."""
MAX_RUNS = 1000
"""The most ticks one listing of a schedule's runs returns."""
Outcome = Literal["created", "replaced", "unchanged"]


@dataclass(frozen=True)
class RunInfo:
    """One handled tick of a schedule."""

    schedule: str
    tick: datetime
    status: str
    """started or missed."""
    job_id: int | None
    job_status: str | None
    """The job's state now (queued, running, succeeded, failed, cancelled, lost)."""
    message: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "tick": self.tick.isoformat(),
            "status": self.status,
            "job_id": self.job_id,
            "job_status": self.job_status,
            "message": self.message,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as stored, with its latest handled tick."""

    name: str
    cron: str
    timezone: str
    args: list[str]
    enabled: bool
    last_tick: datetime | None
    created_at: datetime
    updated_at: datetime
    last_run: RunInfo | None
    kind: str = BATCH
    """batch (`args` of `berth batch run`) or backup (`args` of `berth backup create`)."""

    @cached_property
    def expression(self) -> Cron:
        return Cron(self.cron, self.timezone)

    @property
    def counted_from(self) -> datetime:
        """Ticks after this instant are due: the last handled tick, or the last change."""
        if self.last_tick is None:
            return self.updated_at
        return max(self.last_tick, self.updated_at)

    def next_run(self, now: datetime) -> datetime | None:
        """The next tick to come (after `now`), or None while the schedule is disabled."""
        if not self.enabled:
            return None
        return self.expression.next_after(max(now, self.counted_from))

    def upcoming(self, now: datetime, count: int) -> list[datetime]:
        """The next `count` ticks (after `now`), whether or not the schedule is enabled."""
        return self.expression.upcoming(max(now, self.counted_from), count)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        zone = self.expression.zone
        next_run = self.next_run(now)
        return {
            "name": self.name,
            "kind": self.kind,
            "cron": self.cron,
            "timezone": self.timezone,
            "args": list(self.args),
            "enabled": self.enabled,
            "next_run": None if next_run is None else local_time(next_run, zone),
            "last_tick": None if self.last_tick is None else local_time(self.last_tick, zone),
            "last_run": None if self.last_run is None else self.last_run.to_dict(),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class ScheduleService:
    """Schedules and their run history in the registry database."""

    def __init__(self, db: Database, clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self._clock = clock or (lambda: datetime.now(UTC))
        self._jobs = JobService(db, clock=self._clock)
        self._audit = audit.AuditLog(db)

    # definitions -------------------------------------------------------------------------

    def put(
        self,
        name: str,
        *,
        cron: str,
        args: Sequence[str],
        timezone: str = "UTC",
        enabled: bool = True,
        kind: str = BATCH,
        actor: str | None = None,
        address: str | None = None,
    ) -> tuple[ScheduleInfo, Outcome]:
        """Create the schedule `name`, or replace its definition; refuses what cannot run.

        Audited as `schedule.set` by `actor` (the local CLI user when None), refusals too."""
        detail = {"kind": kind, "cron": cron, "timezone": timezone, "enabled": enabled}
        what = audit.event(actor, address, "schedule.set", name, detail)
        with self._audit.refusals(what):
            check_definition(name, cron, timezone, args, kind)
            try:
                return self._put(name, kind, cron, args, timezone, enabled, what)
            except IntegrityError:  # PostgreSQL: another process created it since we looked
                raise Conflict(
                    f"schedule '{name}' was created by someone else at the same moment; run "
                    "the command again to replace it"
                ) from None

    def _put(
        self,
        name: str,
        kind: str,
        cron: str,
        args: Sequence[str],
        timezone: str,
        enabled: bool,
        what: audit.AuditEvent,
    ) -> tuple[ScheduleInfo, Outcome]:
        now = self._clock()
        with self.db.session(write=True) as session:
            row = _find(session, name, lock=True)
            outcome: Outcome
            if row is None:
                outcome = "created"
                row = ScheduleRow(name=name, created_at=now, last_tick=None)
                session.add(row)
            elif (row.kind, row.cron, row.timezone, list(row.args), row.enabled) == (
                kind,
                cron,
                timezone,
                list(args),
                enabled,
            ):
                outcome = "unchanged"
            else:
                outcome = "replaced"
            if outcome != "unchanged":
                row.kind, row.cron, row.timezone, row.args = kind, cron, timezone, list(args)
                row.enabled, row.updated_at = enabled, now
                session.flush()
            audit.add(session, replace(what, detail={**(what.detail or {}), "outcome": outcome}))
            return self._info(session, row), outcome

    def get(self, name: str) -> ScheduleInfo:
        with self.db.session() as session:
            return self._info(session, _row(session, name))

    def list(self, enabled_only: bool = False, kind: str | None = None) -> list[ScheduleInfo]:
        query = select(ScheduleRow).order_by(ScheduleRow.name)
        if enabled_only:
            query = query.where(ScheduleRow.enabled.is_(True))
        if kind is not None:
            query = query.where(ScheduleRow.kind == kind)
        with self.db.session() as session:
            return [self._info(session, row) for row in session.scalars(query).all()]

    def delete(self, name: str, *, actor: str | None = None, address: str | None = None) -> None:
        """Remove the schedule and its history; jobs it started stay in `berth jobs list`."""
        what = audit.event(actor, address, "schedule.delete", name)
        with self._audit.refusals(what), self.db.session(write=True) as session:
            _row(session, name, lock=True)
            session.execute(delete(ScheduleRunRow).where(ScheduleRunRow.schedule == name))
            session.execute(delete(ScheduleRow).where(ScheduleRow.name == name))
            audit.add(session, what)

    def set_enabled(
        self,
        name: str,
        enabled: bool,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> ScheduleInfo:
        """Pause or resume a schedule; a resumed one does not catch up on the paused ticks."""
        action = "schedule.enable" if enabled else "schedule.disable"
        what = audit.event(actor, address, action, name)
        with self._audit.refusals(what), self.db.session(write=True) as session:
            row = _row(session, name, lock=True)
            if row.enabled != enabled:
                row.enabled = enabled
                row.updated_at = self._clock()
                session.flush()
            audit.add(session, what)
            return self._info(session, row)

    def runs(self, name: str, limit: int = 20) -> Sequence[RunInfo]:
        """The schedule's handled ticks, newest first."""
        if not 1 <= limit <= MAX_RUNS:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_RUNS}")
        query = (
            select(ScheduleRunRow)
            .where(ScheduleRunRow.schedule == name)
            .order_by(ScheduleRunRow.tick.desc())
            .limit(limit)
        )
        with self.db.session() as session:
            _row(session, name)
            rows = session.scalars(query).all()
        return [self._run(row) for row in rows]

    # ticks (the scheduler's side) --------------------------------------------------------

    def record(
        self,
        name: str,
        missed: Sequence[tuple[datetime, str]],
        tick: datetime,
        status: str,
        message: str | None = None,
    ) -> bool:
        """Record `missed` ticks and claim `tick` with `status`, and move last_tick to it.

        True when this call claimed `tick`. The claim is the insert of the tick's row: the
        database refuses a second row for one (schedule, tick), so of any number of schedulers
        acting at once exactly one claims a tick, lease or no lease. Ticks someone else
        already recorded are left as they are.
        """
        now = self._clock()
        rows = [_run_values(name, at, MISSED, why, now) for at, why in missed]
        try:
            with self.db.session() as session:
                if rows:
                    session.execute(self._insert_new(rows))
                claimed = session.connection().execute(
                    self._insert_new([_run_values(name, tick, status, message, now)])
                )
                session.execute(
                    update(ScheduleRow)
                    .where(ScheduleRow.name == name)
                    .where((ScheduleRow.last_tick.is_(None)) | (ScheduleRow.last_tick < tick))
                    .values(last_tick=tick)
                )
                return claimed.rowcount == 1
        except IntegrityError:
            # Not a duplicate tick (those are skipped above) but the schedule itself: it was
            # deleted while the scheduler was deciding. Nothing to claim.
            return False

    def last_job(self, name: str) -> int | None:
        """The job of the schedule's latest started tick."""
        query = (
            select(ScheduleRunRow.job_id)
            .where(ScheduleRunRow.schedule == name, ScheduleRunRow.job_id.is_not(None))
            .order_by(ScheduleRunRow.tick.desc())
            .limit(1)
        )
        with self.db.session() as session:
            return session.scalar(query)

    def attach_job(self, name: str, tick: datetime, job_id: int) -> None:
        with self.db.session() as session:
            session.execute(
                update(ScheduleRunRow)
                .where(ScheduleRunRow.schedule == name, ScheduleRunRow.tick == tick)
                .values(job_id=job_id)
            )

    def _insert_new(self, rows: Sequence[dict[str, Any]]) -> ConflictInsert:
        insert = conflict_insert(self.db.engine.dialect.name, ScheduleRunRow)
        # ON CONFLICT DO NOTHING rather than catching IntegrityError: PostgreSQL would abort
        # the whole transaction (and log an error) at the first duplicate. SQLAlchemy keeps
        # an INSERT's rowcount only when asked, and it is the answer to "did we claim it".
        return (
            insert.values(rows)
            .on_conflict_do_nothing(index_elements=["schedule", "tick"])
            .execution_options(preserve_rowcount=True)
        )

    # rows to values ----------------------------------------------------------------------

    def _info(self, session: Session, row: ScheduleRow) -> ScheduleInfo:
        last = session.scalars(
            select(ScheduleRunRow)
            .where(ScheduleRunRow.schedule == row.name)
            .order_by(ScheduleRunRow.tick.desc())
            .limit(1)
        ).first()
        return ScheduleInfo(
            name=row.name,
            cron=row.cron,
            timezone=row.timezone,
            args=list(row.args or []),
            enabled=row.enabled,
            last_tick=row.last_tick,
            created_at=row.created_at,
            updated_at=row.updated_at,
            last_run=None if last is None else self._run(last),
            kind=row.kind or BATCH,
        )

    def _run(self, row: ScheduleRunRow) -> RunInfo:
        job_status = None
        if row.job_id is not None:
            try:
                job_status = self._jobs.get(row.job_id).state
            except NotFound:
                job_status = "deleted"
        return RunInfo(
            schedule=row.schedule,
            tick=row.tick,
            status=row.status,
            job_id=row.job_id,
            job_status=job_status,
            message=row.message,
            at=row.at,
        )


def set_document(info: ScheduleInfo, outcome: Outcome, now: datetime) -> dict[str, Any]:
    """What storing a schedule answers (the API, and `berth batch schedule` from it): the
    schedule, what changed, and its next run times."""
    zone = info.expression.zone
    return {
        "schedule": info.to_dict(now),
        "outcome": outcome,
        "upcoming": [local_time(tick, zone) for tick in info.upcoming(now, UPCOMING)],
    }


def check_definition(
    name: str, cron: str, timezone: str, args: Sequence[str], kind: str = BATCH
) -> None:
    """Refuse a schedule that could not run: bad name, kind, cron, time zone or arguments."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"schedule name '{name}' must be 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, e.g. nightly-churn"
        )
    check_kind(kind)
    Cron(cron, timezone)
    for arg in args:
        if arg.split("=", 1)[0] in set_per_run(kind):
            raise InvalidInput(f"{arg} is set by the scheduler for each run; leave it out")
    job_fields(kind, args)


def when(moment: datetime, zone: ZoneInfo) -> str:
    """A tick as people read it, in its schedule's zone: `2030-01-02 02:00 CET`."""
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M %Z}"


def local_time(moment: datetime, zone: ZoneInfo) -> str:
    """A moment in ISO 8601, in its schedule's zone (as the documents give times)."""
    return moment.astimezone(zone).isoformat()


def _find(session: Session, name: str, lock: bool = False) -> ScheduleRow | None:
    query = select(ScheduleRow).where(ScheduleRow.name == name)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def _row(session: Session, name: str, lock: bool = False) -> ScheduleRow:
    row = _find(session, name, lock)
    if row is None:
        raise NotFound(f"no schedule '{name}'; `berth batch schedules` lists them")
    return row


def _run_values(
    name: str, tick: datetime, status: str, message: str | None, now: datetime
) -> dict[str, Any]:
    return {"schedule": name, "tick": tick, "status": status, "message": message, "at": now}
