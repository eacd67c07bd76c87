"""Feedback: the true outcome of earlier predictions, stored against the prediction log.

Live accuracy and experiments read it. A caller may give feedback only on predictions of models
it may predict with.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from berth.security.auth import Principal
from berth.store.db import Database
from berth.store.tables import FeedbackRow, PredictionRow
from berth.store.upsert import conflict_insert

_CHUNK = 1000


def store_feedback(
    db: Database, items: dict[str, Any], principal: Principal
) -> tuple[int, list[str]]:
    """Check the caller may give feedback on each prediction's model, then upsert; in a thread.

    Returns (ids stored against a logged prediction, ids with no logged prediction).
    """
    ids = list(items)
    with db.session() as session:
        owners: dict[str, str] = {}
        for chunk in _chunks(ids):
            query = select(PredictionRow.id, PredictionRow.model).where(PredictionRow.id.in_(chunk))
            owners.update((row.id, row.model) for row in session.execute(query))
        for model in sorted(set(owners.values())):
            principal.require_predict(model)
        unknown = [i for i in ids if i not in owners]
        keep = ids if _unrestricted(principal) else [i for i in ids if i in owners]
        now = datetime.now(UTC)
        rows = [{"prediction_id": i, "actual": items[i], "received_at": now} for i in keep]
        for chunk in _chunks(rows):
            session.execute(_upsert(db, chunk))
    return len(owners), unknown


def _unrestricted(principal: Principal) -> bool:
    """May predict with every model (so with whatever model an unknown id turns out to be)."""
    return any(scope in ("admin", "predict") for scope in principal.scopes)


def _upsert(db: Database, rows: list[dict[str, Any]]) -> Any:
    statement = conflict_insert(db.engine.dialect.name, FeedbackRow).values(rows)
    return statement.on_conflict_do_update(
        index_elements=[FeedbackRow.prediction_id],
        set_={"actual": statement.excluded.actual, "received_at": statement.excluded.received_at},
    )


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
