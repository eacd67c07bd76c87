"""Bulk inserts: rows stored by one INSERT of many VALUES read back as SQLAlchemy's own."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from berth.registry.service import Registry
from berth.store import bulk_insert
from berth.store.bulk_insert import insert_values
from berth.store.tables import PredictionRow

TABLE = PredictionRow.__table__


def rows(prefix: str, count: int) -> list[dict[str, Any]]:
    at = datetime(2026, 12, 7, 16, 0, 0, 0, tzinfo=UTC)
    values: list[Any] = [1, None, "yes", [1.5, 2], {"k": "v"}, 0.25, True]
    return [
        {
            "id": f"{prefix}-{i:05d}",
            "model": "m",
            "version": 2,
            "endpoint": "",
            "created_at": at + timedelta(microseconds=i),
            "prediction": values[i % len(values)],
            "score": None if i % 3 == 0 else i / count,
            "latency_ms": 0.5 + i,
        }
        for i in range(count)
    ]


def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """`insert_values` with rows as SQLAlchemy's own insert takes them (dicts, a key a column)."""
    names = list(rows[0]) if rows else []
    insert_values(session, table, names, [[row[name] for name in names] for row in rows])


def stored(registry: Registry, prefix: str) -> list[tuple[Any, ...]]:
    with registry.db.session() as session:
        found = session.execute(
            select(TABLE).where(TABLE.c.id.like(f"{prefix}-%")).order_by(TABLE.c.id)
        )
        return [tuple(row)[1:] for row in found]


def test_rows_read_back_as_sqlalchemy_stores_them(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 4 rows: 11 rows take three statements, the last one shorter.
    monkeypatch.setattr(bulk_insert, "ROWS_PER_STATEMENT", 4)
    with registry.db.session() as session:
        session.execute(insert(TABLE), rows("core", 11))
    with registry.db.session() as session:
        insert_rows(session, TABLE, rows("bulk", 11))
    core, bulk = stored(registry, "core"), stored(registry, "bulk")
    assert len(bulk) == 11
    assert bulk == core
    assert bulk[1][4] is None  # JSON null reads back as None
    assert bulk[0][3] == datetime(2026, 12, 7, 16, 0, 0, 0, tzinfo=UTC)


def test_statements_stay_within_sqlites_limit_on_bound_values(
    sqlite_registry: Registry,
) -> None:
    # SQLite before 3.32 allowed 999 bound values; here the connection allows 20, so 11 rows of
    # eight columns go in two at a time.
    with sqlite_registry.db.session() as session:
        raw = session.connection().connection.dbapi_connection
        assert raw is not None
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20)  # type: ignore[attr-defined]
        try:
            insert_rows(session, TABLE, rows("bulk", 11))
        finally:
            raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766)  # type: ignore[attr-defined]
    assert len(stored(sqlite_registry, "bulk")) == 11


def test_no_rows_is_nothing_to_do(registry: Registry) -> None:
    with registry.db.session() as session:
        insert_rows(session, TABLE, [])
    assert stored(registry, "bulk") == []


def test_a_failing_chunk_rolls_the_whole_write_back(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_insert, "ROWS_PER_STATEMENT", 4)
    written = rows("bulk", 6)
    written[5]["id"] = written[0]["id"]  # the second chunk repeats a primary key
    with (
        pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"),
        registry.db.session() as session,
    ):
        insert_rows(session, TABLE, written)
    assert stored(registry, "bulk") == []


def test_a_row_short_of_a_value_is_refused_before_anything_is_sent(
    sqlite_registry: Registry,
) -> None:
    names = list(rows("x", 1)[0])
    short = [list(rows("short", 2)[0].values()), list(rows("short", 2)[1].values())[:-1]]
    with (
        pytest.raises(ValueError, match="each of the 8 columns"),
        sqlite_registry.db.session() as s,
    ):
        insert_values(s, TABLE, names, short)
    assert stored(sqlite_registry, "short") == []
