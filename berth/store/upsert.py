"""INSERTs that take ON CONFLICT clauses, in the dialect of the database in use.

Only the dialect in use is imported: a server on SQLite never loads SQLAlchemy's PostgreSQL
dialect (40 ms and 2 MB in every worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

    ConflictInsert = postgresql.Insert | sqlite.Insert


def conflict_insert(dialect: str, table: Any) -> ConflictInsert:
    """`INSERT INTO table` for PostgreSQL (`dialect == "postgresql"`) or else SQLite."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)
