"""The audit log: who did what, when, from where, with what outcome.

Admin actions are recorded in the same transaction as the change they describe (`add`), so an
action and its record commit or fail together. Authentication failures come from the hot path,
so the API queues them (`AuditQueue`) and writes them in batches; a flood of failures fills a
bounded queue and is counted, never slowing requests down. Every event is also one JSON log line
on the `berth.audit` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.errors import BerthError, DatabaseUnavailable, InvalidInput
from berth.store.db import Database
from berth.store.tables import AuditRow

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("berth.audit")


@functools.cache
def _dropped_counter() -> Counter:
    # Made with the first queue (a server's): the CLI records events directly and should not
    # pay for importing prometheus_client.
    from prometheus_client import Counter

    return Counter(
        "berth_audit_events_dropped", "Audit events dropped because the write queue was full."
    )


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    target: str = ""
    outcome: str = "ok"
    address: str | None = None
    detail: dict[str, Any] | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["at"] = self.at.isoformat()
        return document


def event(
    actor: str | None,
    address: str | None,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """An event by `actor` (the local CLI user when None)."""
    return AuditEvent(
        actor=actor or cli_actor(), action=action, target=target, address=address, detail=detail
    )


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (containers)
        return "cli:unknown"


def add(session: Session, event: AuditEvent) -> None:
    """Record `event` in the caller's transaction, and log it."""
    session.add(_row(event))
    log.info(json.dumps({"audit": event.to_dict()}, default=str))


def _row(event: AuditEvent) -> AuditRow:
    return AuditRow(
        at=event.at,
        actor=event.actor,
        action=event.action,
        target=event.target,
        outcome=event.outcome,
        address=event.address,
        detail=event.detail,
    )


MAX_LISTED = 1000
"""The most events one listing returns (`berth audit list --limit`, GET /api/v1/audit)."""
MAX_ACTOR_CHARS = 128


def check_listing(actor: str | None, limit: int) -> None:
    """Refuse a listing's filters as both edges word it."""
    if actor is not None and len(actor) > MAX_ACTOR_CHARS:
        raise InvalidInput(f"actor is at most {MAX_ACTOR_CHARS} characters")
    if not 1 <= limit <= MAX_LISTED:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LISTED}")


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, event: AuditEvent) -> None:
        with self.db.session() as session:
            add(session, event)

    @contextlib.contextmanager
    def refusals(self, event: AuditEvent) -> Iterator[None]:
        """Record a refused action in its own transaction (the action's own rolled back)."""
        try:
            yield
        except DatabaseUnavailable:
            raise  # nothing was refused, and recording it would wait on the same database
        except BerthError as exc:
            detail = {**(event.detail or {}), "error": exc.message}
            try:
                self.record(replace(event, outcome="refused", detail=detail))
            except Exception:
                log.exception("could not record the refused %s of %s", event.action, event.target)
            raise

    def record_many(self, events: list[AuditEvent]) -> None:
        with self.db.session() as session:
            for event in events:
                add(session, event)

    def list(
        self,
        since: datetime | None = None,
        actor: str | None = None,
        limit: int = 100,
        *,
        action: str | None = None,
        offset: int = 0,
    ) -> list[AuditEvent]:
        """Events newest first. `action` is one action (`key.create`), or all of a family when
        it ends in a dot (`key.`); `offset` skips that many of the newest (pages of a listing)."""
        query = (
            select(AuditRow)
            .order_by(AuditRow.at.desc(), AuditRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        if action is not None and action.endswith("."):
            query = query.where(AuditRow.action.startswith(action, autoescape=True))
        elif action is not None:
            query = query.where(AuditRow.action == action)
        with self.db.session() as session:
            return [
                AuditEvent(
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    outcome=r.outcome,
                    address=r.address,
                    detail=r.detail,
                    at=r.at,
                )
                for r in session.scalars(query)
            ]


class AuditQueue:
    """Events from the hot path, written in batches by a background task."""

    def __init__(self, audit: AuditLog, capacity: int = 10_000, interval: float = 0.5) -> None:
        self.audit = audit
        self.interval = interval
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(capacity)
        self._task: asyncio.Task[None] | None = None
        self._dropped = _dropped_counter()
        # One flush at a time: a flush that found the queue emptied by the background one
        # must still return only once those events are written.
        self._flushing = asyncio.Lock()

    def put(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped.inc()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            # Not in the middle of a write: cancelled there, the task would let go of the lock
            # while its thread still wrote, and the process could exit before that committed.
            async with self._flushing:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        """Write every event put before the call; returns when they are in the database."""
        async with self._flushing:
            events: list[AuditEvent] = []
            while not self._queue.empty():
                events.append(self._queue.get_nowait())
            if events:
                import anyio.to_thread

                try:
                    await anyio.to_thread.run_sync(self.audit.record_many, events)
                except Exception:
                    self._dropped.inc(len(events))
                    log.exception("could not write %d audit events", len(events))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
