"""A named lease in the registry database: at most one holder acts at a time across processes.

The rollout controller (and later the batch scheduler) runs in every server process and replica;
only the holder of its lease may act. A holder keeps the lease by renewing it well within the
TTL; if it dies or loses the database, the term runs out and another process takes over.

Both taking and renewing are one conditional upsert, so the database decides atomically who
wins; nothing depends on the transaction isolation level or on reading before writing.
Terms are measured with the callers' clocks, so hosts sharing a database need roughly
synchronised clocks (NTP), and the TTL must exceed the worst skew between them.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, literal, or_, select, update

from berth.errors import DatabaseUnavailable, InvalidInput
from berth.store.db import Database
from berth.store.tables import LeaseRow, UTCDateTime
from berth.store.upsert import conflict_insert

if TYPE_CHECKING:
    from berth.store.upsert import ConflictInsert

__all__ = ["Clock", "Lease", "LeaseInfo", "process_holder"]

log = logging.getLogger("berth.rollouts")

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime (a naive one is taken as UTC)."""

# What "the database cannot be reached" looks like (a refused or dropped connection, a
# locked SQLite file past its busy timeout, an exhausted pool: `Database.session` says which).
# Anything else (a missing table, a bad statement) is a bug and should crash loudly instead of
# looking like a lost lease.
_UNREACHABLE = DatabaseUnavailable

_NAME_LIMIT = 64
_HOLDER_LIMIT = 128


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds (or last held) a lease, since when, and until when."""

    name: str
    holder: str
    expires_at: datetime
    acquired_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "holder": self.holder,
            "expires_at": self.expires_at.isoformat(),
            "acquired_at": self.acquired_at.isoformat(),
        }


class Lease:
    """One process's handle on the lease `name`, held as `holder`.

    Call `acquire()` periodically (every third of the TTL or so) and act only while it returns
    True; call `release()` on shutdown so a successor need not wait for the term to run out.
    """

    def __init__(
        self,
        db: Database,
        name: str,
        holder: str,
        ttl_seconds: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not name or len(name) > _NAME_LIMIT:
            raise InvalidInput(f"lease name must be 1 to {_NAME_LIMIT} characters, got {name!r}")
        if not holder or len(holder) > _HOLDER_LIMIT:
            raise InvalidInput(
                f"lease holder must be 1 to {_HOLDER_LIMIT} characters, got {holder!r}"
            )
        if not ttl_seconds > 0:
            raise InvalidInput(f"lease ttl_seconds must be positive, got {ttl_seconds}")
        dialect = db.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise InvalidInput(
                f"leases need SQLite or PostgreSQL as the registry database, not {dialect}"
            )
        self.db = db
        self.name = name
        self.holder = holder
        self.ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock or _utcnow
        # The end of the term the last successful acquire() granted; None once it said no.
        self._term_end: datetime | None = None

    @property
    def held(self) -> bool:
        """Whether the last acquire() succeeded and its term has not run out by the clock.

        This asks no database: it is what the holder may rely on between renewals.
        """
        term_end = self._term_end
        return term_end is not None and self._now() < term_end

    def acquire(self) -> bool:
        """Take the lease if it is free or expired, or renew it if this holder has it.

        True when this holder holds it afterwards, until now + TTL. Two contenders never both
        get True for overlapping terms. When the database cannot be reached this logs and
        returns False, so a holder that has lost the database stops acting instead of crashing.
        """
        now = self._now()
        # Both the recorded and the local term count from before the statement is sent, so
        # however long the round trip (or a wait for SQLite's write lock) takes, `held` never
        # outlasts what the database promised; a slow renewal just leaves less of the term.
        term_end = now + self.ttl
        try:
            with self.db.session(write=True) as session:
                result = session.connection().execute(self._take_statement(now, term_end))
                won = result.rowcount == 1
        except _UNREACHABLE as exc:
            self._term_end = None
            log.warning(
                "cannot renew lease %r as %s, acting as not holding it: %s",
                self.name,
                self.holder,
                getattr(exc, "orig", None) or exc,
            )
            return False
        self._term_end = term_end if won else None
        return won

    def release(self) -> None:
        """Give the lease up now, if this holder has it; otherwise do nothing.

        Never raises for an unreachable database: release runs on shutdown paths, and an
        unreleased lease only makes a successor wait for the term to end.
        """
        self._term_end = None
        now = self._now()
        # Ending the term now (rather than deleting the row) keeps the last holder visible to
        # `current()`; the `> now` guard leaves an already lapsed term's record untouched.
        statement = (
            update(LeaseRow)
            .where(
                LeaseRow.name == self.name,
                LeaseRow.holder == self.holder,
                LeaseRow.expires_at > now,
            )
            .values(expires_at=now)
            .execution_options(synchronize_session=False)
        )
        try:
            with self.db.session(write=True) as session:
                session.execute(statement)
        except _UNREACHABLE as exc:
            log.warning(
                "cannot release lease %r held by %s; it lapses on its own: %s",
                self.name,
                self.holder,
                getattr(exc, "orig", None) or exc,
            )

    def current(self) -> LeaseInfo | None:
        """The lease's record: its holder and term, possibly already over; None if never taken.

        Unlike `acquire()`, database errors propagate: a caller asking who holds the lease
        should learn that nobody can tell.
        """
        with self.db.session() as session:
            row = session.scalars(select(LeaseRow).where(LeaseRow.name == self.name)).first()
            if row is None:
                return None
            return LeaseInfo(
                name=row.name,
                holder=row.holder,
                expires_at=row.expires_at,
                acquired_at=row.acquired_at,
            )

    def _take_statement(self, now: datetime, term_end: datetime) -> ConflictInsert:
        """INSERT the lease, or on conflict take/renew it when ours or expired, in one statement.

        An upsert rather than UPDATE-then-INSERT so two processes racing to create the row
        need no IntegrityError handling: the database serialises them on the primary key, and
        the loser's ON CONFLICT branch sees the winner's fresh term and changes nothing
        (rowcount 0). On PostgreSQL under READ COMMITTED the conflict WHERE is evaluated
        against the latest committed row, which is what makes the take-over atomic.
        """
        insert = conflict_insert(self.db.engine.dialect.name, LeaseRow)
        statement = insert.values(
            name=self.name, holder=self.holder, expires_at=term_end, acquired_at=now
        )
        at = literal(now, UTCDateTime())
        ours = LeaseRow.holder == self.holder
        running = LeaseRow.expires_at > at
        return statement.on_conflict_do_update(
            index_elements=[LeaseRow.name],
            set_={
                "holder": self.holder,
                "expires_at": literal(term_end, UTCDateTime()),
                # A renewal keeps the start of the tenure; a new holder, or the same one coming
                # back after its term lapsed, starts a new one.
                "acquired_at": case((and_(ours, running), LeaseRow.acquired_at), else_=at),
            },
            # "Expired" is `<=`, the same instant at which `held` turns False, so a
            # lease released at `now` can be taken by a contender reading the same `now`.
            where=or_(ours, LeaseRow.expires_at <= at),
        ).execution_options(
            # SQLAlchemy only keeps an INSERT's rowcount when asked (on psycopg it reads -1
            # otherwise), and it is the whole answer: 1 when inserted or taken, 0 when not.
            preserve_rowcount=True
        )

    def _now(self) -> datetime:
        now = self._clock()
        # Naive times are taken as UTC, as the registry's UTCDateTime column does.
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


_holders: dict[int, str] = {}


def process_holder() -> str:
    """A holder id unique to this process: `hostname:pid:suffix`, the same on every call.

    The random suffix tells apart processes that share a hostname and pid (containers on the
    host network each running as pid 1, or a pid reused after a restart), which would
    otherwise renew each other's lease. It is keyed by pid so a forked child gets its own.
    """
    pid = os.getpid()
    found = _holders.get(pid)
    if found is None:
        suffix = secrets.token_hex(3)
        tail = f":{pid}:{suffix}"
        found = socket.gethostname()[: _HOLDER_LIMIT - len(tail)] + tail
        _holders[pid] = found
    return found
