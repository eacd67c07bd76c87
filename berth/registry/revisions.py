"""Revision counters of shared state: raised in the transaction of every change, read by servers
in one query to tell whether anything moved since they last looked.

`models`: versions, aliases and accelerated twins (what a model reference resolves to and how it
loads); `endpoints`: endpoints and their routes. A server re-reads what it serves only when a
number moved (and, as a fallback, every `FULL_REFRESH_SECONDS` of `berth.serving.dataplane`):
one cheap query a second instead of one per served reference.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from berth.store.db import Database
from berth.store.tables import RevisionRow

MODELS = "models"
ENDPOINTS = "endpoints"


def bump(session: Session, topic: str) -> None:
    """Raise `topic`'s number, in the caller's transaction."""
    changed = session.execute(
        update(RevisionRow).where(RevisionRow.topic == topic).values(number=RevisionRow.number + 1)
    )
    if getattr(changed, "rowcount", 0) == 0:
        session.add(RevisionRow(topic=topic, number=1))


def current(db: Database) -> dict[str, int]:
    """Every topic's number (a topic never raised is absent: read it as 0)."""
    with db.session() as session:
        return {row.topic: row.number for row in session.scalars(select(RevisionRow))}
