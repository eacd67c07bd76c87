"""A SQL sink: each chunk's rows, its rejected rows and the job's checkpoint in one transaction.

The checkpoint update is conditional on the chunk counter it read, so a second run of the same
job racing this one rolls back instead of writing twice.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from berth.errors import Conflict, InvalidInput
from berth.jobs.sink_types import Checkpoint, ErrorWriter, id_key, rejected_ids
from berth.jobs.sql import quote_relation, reason, safe_url, split_relation, sql_engine
from berth.store.upsert import conflict_insert

Array = np.ndarray[Any, Any]

CHECKPOINTS = "berth_batch_checkpoints"
PREDICTED_AT = "predicted_at"
_ID_QUERY_BATCH = 5_000


class SqlSink:
    """A table in any SQLAlchemy database; results and checkpoint commit together."""

    def __init__(
        self,
        url: str,
        table: str,
        id_column: str,
        upsert: bool,
        errors_table: str | None,
        errors: ErrorWriter | None,
    ) -> None:
        self.url = url
        self.engine: Engine = sql_engine(url, "--sink")
        self.table_name = table
        self.id_column = id_column
        self.upsert = upsert
        self.errors = errors
        self.errors_table = errors_table
        self.description = f"{safe_url(url)} table {table}"
        self._job_key = ""
        self._table: sa.Table | None = None
        self._unique = False
        self._had_rows = False
        self._rejects: sa.Table | None = None

    def open(self, job_key: str) -> Checkpoint:
        self._job_key = job_key
        dialect = self.engine.dialect.name
        if self.upsert and dialect not in ("postgresql", "sqlite"):
            raise InvalidInput(
                f"--mode upsert is supported on PostgreSQL and SQLite, not {dialect}; use "
                "--mode append"
            )
        try:
            self._checkpoints().create(self.engine, checkfirst=True)
            self._reflect()
            if self.errors_table is not None:
                self._rejects = _errors_table(self.errors_table)
                self._rejects.create(self.engine, checkfirst=True)
            if self.errors is not None:
                self.errors.open(job_key, self._read_checkpoint().chunks)
            return self._read_checkpoint()
        except SQLAlchemyError as exc:
            raise InvalidInput(
                f"cannot prepare the sink {self.description}: {reason(exc)}; check the URL, "
                "that the database is reachable and that this user may create tables"
            ) from exc

    def existing(self, ids: Array, scored_only: bool) -> Array:
        if self._table is None or not self._had_rows or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        if scored_only and PREDICTED_AT not in self._table.c:
            return np.zeros(len(ids), dtype=bool)  # inputs without results yet
        column = self._table.c[self.id_column]
        found: set[Any] = set()
        values = [_python(v) for v in ids.tolist()]
        with self.engine.connect() as connection:
            for start in range(0, len(values), _ID_QUERY_BATCH):
                batch = values[start : start + _ID_QUERY_BATCH]
                query = sa.select(column).where(column.in_(batch))
                if scored_only:
                    query = query.where(self._table.c[PREDICTED_AT].is_not(None))
                found.update(id_key(v) for v in connection.scalars(query))
        return np.fromiter((id_key(v) in found for v in values), bool, count=len(values))

    def commit(
        self, results: pd.DataFrame, rejected: pd.DataFrame, before: Checkpoint, after: Checkpoint
    ) -> None:
        if len(rejected) and self.errors is not None:
            self.errors.write(self._job_key, after.chunks, rejected)
        try:
            with self.engine.begin() as connection:
                if len(results):
                    self._insert(connection, results)
                if self._rejects is not None:
                    _replace_rejects(
                        connection, self._rejects, self._job_key, after.chunks, rejected
                    )
                self._advance(connection, before, after)
        except IntegrityError as exc:
            raise InvalidInput(
                f"writing to {self.description} failed: {reason(exc)}; the chunk was rolled "
                "back. A unique key the job does not know about? Use --mode upsert with "
                "--id-column set to that key"
            ) from exc

    def finish(self, before: Checkpoint) -> Checkpoint:
        after = replace(before, finished=True)
        with self.engine.begin() as connection:
            self._advance(connection, before, after)
        return after

    def close(self) -> None:
        self.engine.dispose()

    # internals -----------------------------------------------------------------------------

    def _checkpoints(self) -> sa.Table:
        return sa.Table(
            CHECKPOINTS,
            sa.MetaData(),
            sa.Column("job_key", sa.String(64), primary_key=True),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("chunks", sa.Integer, nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )

    def _read_checkpoint(self) -> Checkpoint:
        table = self._checkpoints()
        with self.engine.begin() as connection:
            state = connection.scalar(
                sa.select(table.c.state).where(table.c.job_key == self._job_key)
            )
            if state is None:
                with contextlib.suppress(IntegrityError), connection.begin_nested():
                    connection.execute(
                        table.insert().values(
                            job_key=self._job_key,
                            state=json.dumps(Checkpoint().to_dict()),
                            chunks=0,
                            updated_at=datetime.now(UTC),
                        )
                    )
                return Checkpoint()
        return Checkpoint.from_dict(json.loads(state))

    def _advance(self, connection: Connection, before: Checkpoint, after: Checkpoint) -> None:
        table = self._checkpoints()
        moved = connection.execute(
            table.update()
            .where(table.c.job_key == self._job_key, table.c.chunks == before.chunks)
            .values(
                state=json.dumps(after.to_dict()), chunks=after.chunks, updated_at=datetime.now(UTC)
            )
        )
        if moved.rowcount != 1:
            raise Conflict(
                f"another run of this job committed to {self.description} meanwhile; this "
                "run's last chunk was rolled back. Run one copy of a job at a time"
            )

    def _reflect(self) -> None:
        schema, name = split_relation(self.table_name)
        inspector = sa.inspect(self.engine)
        if not inspector.has_table(name, schema=schema):
            return
        self._table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=self.engine)
        if self.id_column not in self._table.c:
            raise InvalidInput(
                f"the sink table {self.table_name} has no column {self.id_column!r}; pass "
                f"--id-column with its key (columns: {[c.name for c in self._table.c]})"
            )
        self._unique = _is_unique(inspector, name, schema, self.id_column)
        if self.upsert and not self._unique:
            raise InvalidInput(
                f"--mode upsert needs a unique key on {self.table_name}.{self.id_column}; "
                f"create one (CREATE UNIQUE INDEX ON {self.table_name} ({self.id_column})) "
                "or use --mode append"
            )
        with self.engine.connect() as connection:
            first = connection.execute(sa.select(sa.literal(1)).select_from(self._table).limit(1))
            self._had_rows = first.first() is not None

    def _insert(self, connection: Connection, results: pd.DataFrame) -> None:
        if self._table is None:
            self._table = _results_table(self.table_name, self.id_column, results)
            self._table.create(connection, checkfirst=True)
            self._unique = True
        else:
            self._add_missing_columns(connection, results)
        rows = _records(results)
        dialect = connection.dialect.name
        if not self._unique or dialect not in ("postgresql", "sqlite"):
            connection.execute(self._table.insert(), rows)
            return
        statement = conflict_insert(dialect, self._table)
        if self.upsert:
            updates = {c: statement.excluded[c] for c in results.columns if c != self.id_column}
            statement = statement.on_conflict_do_update(
                index_elements=[self.id_column], set_=updates
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=[self.id_column])
        connection.execute(statement, rows)

    def _add_missing_columns(self, connection: Connection, results: pd.DataFrame) -> None:
        """Writing results back into a table of inputs: add the output columns it lacks."""
        assert self._table is not None
        missing = [c for c in results.columns if c not in self._table.c]
        if not missing:
            return
        relation = quote_relation(self.engine, self.table_name)
        quote = self.engine.dialect.identifier_preparer.quote
        for name in missing:
            column = sa.Column(name, _column_type(results[name]))
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(sa.text(f"ALTER TABLE {relation} ADD COLUMN {quote(name)} {kind}"))
            self._table.append_column(column)


class SqlErrors:
    """Rejected rows in a table of their own database (not the sink's)."""

    def __init__(self, url: str, table: str) -> None:
        self.engine = sql_engine(url, "--errors")
        self.table = _errors_table(table)
        self.description = f"{safe_url(url)} table {table}"

    def open(self, job_key: str, chunks: int) -> None:
        try:
            self.table.create(self.engine, checkfirst=True)
            with self.engine.begin() as connection:
                connection.execute(
                    self.table.delete().where(
                        self.table.c.job_key == job_key, self.table.c.chunk > chunks
                    )
                )
        except SQLAlchemyError as exc:
            raise InvalidInput(
                f"cannot prepare the errors table {self.description}: {reason(exc)}"
            ) from exc

    def write(self, job_key: str, chunk: int, rejected: pd.DataFrame) -> None:
        with self.engine.begin() as connection:
            _replace_rejects(connection, self.table, job_key, chunk, rejected)


def _errors_table(name: str) -> sa.Table:
    schema, table = split_relation(name)
    return sa.Table(
        table,
        sa.MetaData(),
        sa.Column("row_id", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("job_key", sa.String(64), nullable=False, index=True),
        sa.Column("chunk", sa.Integer, nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )


def _replace_rejects(
    connection: Connection, table: sa.Table, job_key: str, chunk: int, rejected: pd.DataFrame
) -> None:
    """The chunk's rejected rows replace what the job recorded for that chunk, and for those
    rows: a rerun that rejects a row again records it once, with the latest reason."""
    connection.execute(table.delete().where(table.c.job_key == job_key, table.c.chunk == chunk))
    if not len(rejected):
        return
    ids = rejected_ids(rejected)
    for start in range(0, len(ids), _ID_QUERY_BATCH):
        connection.execute(
            table.delete().where(
                table.c.job_key == job_key, table.c.row_id.in_(ids[start : start + _ID_QUERY_BATCH])
            )
        )
    rows = [
        {
            "row_id": str(record["id"]),
            "reason": record["reason"],
            "row": record["row"],
            "model": record["model"],
            "version": record["version"],
            "job_key": job_key,
            "chunk": chunk,
            "rejected_at": record["rejected_at"],
        }
        for record in _records(rejected.rename(columns={rejected.columns[0]: "id"}))
    ]
    connection.execute(table.insert(), rows)


def _results_table(name: str, id_column: str, results: pd.DataFrame) -> sa.Table:
    schema, table = split_relation(name)
    columns = [
        sa.Column(c, _column_type(results[c]), primary_key=(c == id_column))
        for c in results.columns
    ]
    return sa.Table(table, sa.MetaData(), *columns, schema=schema)


def _column_type(series: pd.Series[Any]) -> sa.types.TypeEngine[Any]:
    kind = series.dtype.kind
    if kind == "b":
        return sa.Boolean()
    if kind in "iu":
        return sa.BigInteger()
    if kind == "f":
        return sa.Float()
    if kind == "M":
        return sa.DateTime(timezone=True)
    return sa.Text()


def _is_unique(inspector: Any, table: str, schema: str | None, column: str) -> bool:
    keys: list[Sequence[str]] = [
        inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
    ]
    keys += [u["column_names"] for u in inspector.get_unique_constraints(table, schema=schema)]
    keys += [
        i["column_names"] for i in inspector.get_indexes(table, schema=schema) if i.get("unique")
    ]
    return any(list(key) == [column] for key in keys)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _python(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _python(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, float) and value != value:
        return None
    return value
