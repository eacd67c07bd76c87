"""Where a batch job's results go, committed a chunk at a time together with its checkpoint.

Exactly once, even after kill -9 at any instant:

- A SQL sink writes each chunk's rows, its rejected rows (when the errors table lives in the
  same database) and the job's checkpoint in one transaction. The checkpoint update is
  conditional on the chunk counter it read, so a second run of the same job racing this one
  rolls back instead of writing twice.
- A file sink is a folder of parts plus `_manifest.json`. A part is written to a temporary
  name, synced and renamed; then the manifest naming it is replaced the same way. A part the
  manifest does not name was never committed: the next run deletes it and redoes its chunk.
  A lock on `_lock` keeps a second run out while one is writing.

Rejected rows kept elsewhere are written before the chunk commits, under the chunk's number, so
redoing a chunk rewrites the same errors rather than adding more.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from berth.errors import Conflict, InvalidInput
from berth.jobs.sources import CSV, JSONL, PARQUET, Position, file_format
from berth.jobs.sql import is_sql_url, quote_relation, reason, safe_url, split_relation, sql_engine

Array = np.ndarray[Any, Any]

MANIFEST = "_manifest.json"
LOCK = "_lock"
ERRORS_FOLDER = "_errors"
CHECKPOINTS = "berth_batch_checkpoints"
PREDICTED_AT = "predicted_at"
_PART = re.compile(r"^part-(\d+)\.(csv|parquet|jsonl)$")
_ERRORS_PART = re.compile(r"^errors-(\d+)\.(csv|parquet|jsonl)$")
_ID_QUERY_BATCH = 5_000


@dataclass(frozen=True)
class Checkpoint:
    """How far a job got: what its sink holds committed, read back when it runs again."""

    position: Position = field(default_factory=dict)
    chunks: int = 0
    """Chunks committed by every run of this job; numbers parts, so none is ever reused."""
    scored: int = 0
    skipped: int = 0
    rejected: int = 0
    finished: bool = True
    """False while a run is under way (or was killed): the next run resumes from `position`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "chunks": self.chunks,
            "scored": self.scored,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            position=dict(data.get("position") or {}),
            chunks=int(data.get("chunks", 0)),
            scored=int(data.get("scored", 0)),
            skipped=int(data.get("skipped", 0)),
            rejected=int(data.get("rejected", 0)),
            finished=bool(data.get("finished", True)),
        )


class ErrorWriter(Protocol):
    description: str

    def open(self, job_key: str, chunks: int) -> None:
        """Forget rejected rows of chunks after `chunks`: they were never committed."""
        ...

    def write(self, job_key: str, chunk: int, rejected: pd.DataFrame) -> None:
        """Store a chunk's rejected rows; writing the same chunk again replaces them."""
        ...


class Sink(Protocol):
    description: str
    errors: ErrorWriter | None

    def open(self, job_key: str) -> Checkpoint:
        """Keep other runs of this job out, drop uncommitted leftovers, read the checkpoint."""
        ...

    def existing(self, ids: Array, scored_only: bool) -> Array:
        """For each id, whether the sink already holds its row (with a prediction, when
        `scored_only`)."""
        ...

    def commit(
        self, results: pd.DataFrame, rejected: pd.DataFrame, before: Checkpoint, after: Checkpoint
    ) -> None: ...

    def finish(self, before: Checkpoint) -> Checkpoint: ...

    def close(self) -> None: ...


def open_sink(
    location: str,
    sink_table: str | None,
    id_column: str,
    upsert: bool,
    errors: str | None,
    errors_table: str | None,
) -> Sink:
    if is_sql_url(location):
        if not sink_table:
            raise InvalidInput(
                f"a SQL sink needs --sink-table NAME for the results in {safe_url(location)}"
            )
        same_db = errors is None or errors == location
        table = errors_table or f"{sink_table}_errors"
        writer = None if same_db else error_writer(errors or "", errors_table, sink_table)
        return SqlSink(location, sink_table, id_column, upsert, table if same_db else None, writer)
    if sink_table is not None:
        raise InvalidInput("--sink-table applies to a SQL sink; --sink is a file path")
    if upsert:
        raise InvalidInput(
            "--mode upsert needs a SQL sink (files are append-only); use a SQLAlchemy URL "
            "with --sink-table, or --mode append"
        )
    folder = Path(location).expanduser()
    fmt = file_format(location, "--sink")
    writer = (
        FolderErrors(folder / ERRORS_FOLDER, JSONL)
        if errors is None
        else error_writer(errors, errors_table, None)
    )
    return FileSink(folder, fmt, id_column, writer)


def error_writer(location: str, table: str | None, sink_table: str | None) -> ErrorWriter:
    if is_sql_url(location):
        name = table or (f"{sink_table}_errors" if sink_table else None)
        if not name:
            raise InvalidInput("--errors is a SQL URL: give the table with --errors-table NAME")
        return SqlErrors(location, name)
    return FolderErrors(Path(location).expanduser(), file_format(location, "--errors"))


# files -------------------------------------------------------------------------------------


class FileSink:
    """A folder of parts (CSV, Parquet or JSON lines) and the manifest that commits them."""

    def __init__(self, folder: Path, fmt: str, id_column: str, errors: ErrorWriter) -> None:
        self.folder = folder
        self.format = fmt
        self.id_column = id_column
        self.errors: ErrorWriter | None = errors
        self.description = f"{folder}/ ({fmt} parts)"
        self._lock: IO[bytes] | None = None
        self._manifest: dict[str, Any] = {}
        self._ids: IdSet | None = None

    def open(self, job_key: str) -> Checkpoint:
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidInput(
                f"--sink {self.folder} is a file; Berth writes a folder of parts there. Give "
                "a path that does not exist yet (or an earlier run's folder)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        manifest = self._read_manifest()
        if manifest and manifest.get("job_key") != job_key:
            raise Conflict(
                f"{self.folder} holds the results of another job ({manifest.get('job')}); "
                "give this job its own --sink folder"
            )
        self._manifest = manifest or {"job_key": job_key, "format": self.format, "parts": []}
        if self._manifest.get("format", self.format) != self.format:
            raise Conflict(
                f"{self.folder} holds {self._manifest['format']} parts; keep the extension"
            )
        checkpoint = Checkpoint.from_dict(self._manifest.get("checkpoint", {}))
        self._drop_uncommitted()
        assert self.errors is not None
        self.errors.open(job_key, checkpoint.chunks)
        return checkpoint

    def existing(self, ids: Array, scored_only: bool) -> Array:
        if self._ids is None:
            self._ids = IdSet(self._committed_ids())
        return self._ids.contains(ids)

    def commit(
        self, results: pd.DataFrame, rejected: pd.DataFrame, before: Checkpoint, after: Checkpoint
    ) -> None:
        if len(rejected):
            assert self.errors is not None
            self.errors.write(self._manifest["job_key"], after.chunks, rejected)
        parts = list(self._manifest.get("parts", []))
        if len(results):
            name = f"part-{after.chunks:06d}.{self.format}"
            write_frame(results, self.folder / name, self.format)
            parts.append({"file": name, "rows": len(results), "chunk": after.chunks})
        manifest = {**self._manifest, "parts": parts, "checkpoint": after.to_dict()}
        manifest["updated_at"] = datetime.now(UTC).isoformat()
        _write_atomically(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        self._manifest = manifest

    def finish(self, before: Checkpoint) -> Checkpoint:
        after = replace(before, finished=True)
        manifest = {**self._manifest, "checkpoint": after.to_dict()}
        manifest["updated_at"] = datetime.now(UTC).isoformat()
        _write_atomically(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        self._manifest = manifest
        return after

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def describe_parts(self) -> str:
        parts = self._manifest.get("parts", [])
        return f"{len(parts)} part{'s' if len(parts) != 1 else ''}"

    def set_job(self, job: str) -> None:
        """A human description of the job, kept in the manifest for whoever finds the folder."""
        self._manifest["job"] = job

    def _take_lock(self) -> None:
        handle = (self.folder / LOCK).open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise Conflict(
                f"another run is writing to {self.folder}; wait for it to finish, or cancel it "
                "(`berth jobs list`, `berth jobs cancel ID`)"
            ) from exc
        self._lock = handle

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.exists():
            if any(not p.name.startswith(("_", ".")) for p in self.folder.iterdir()):
                raise Conflict(
                    f"{self.folder} already holds files but no Berth manifest; give the job an "
                    "empty or new --sink folder"
                )
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise Conflict(f"cannot read {path}: {exc}; move the folder aside") from exc
        if not isinstance(manifest, dict):
            raise Conflict(f"{path} is not a Berth manifest; move the folder aside")
        return manifest

    def _drop_uncommitted(self) -> None:
        named = {part["file"] for part in self._manifest.get("parts", [])}
        for path in self.folder.iterdir():
            if path.name.endswith(".tmp") or (_PART.match(path.name) and path.name not in named):
                path.unlink()

    def _committed_ids(self) -> Array:
        arrays = [
            read_column(self.folder / part["file"], self.format, self.id_column)
            for part in self._manifest.get("parts", [])
        ]
        return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


class FolderErrors:
    """Rejected rows as a folder of parts, one per chunk, named by the chunk's number.

    A row is recorded once: a rerun that rejects it again (the same command, run again over the
    same source) does not add it a second time.
    """

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder = folder
        self.format = fmt
        self.description = f"{folder}/"
        self._recorded: set[str] = set()

    def open(self, job_key: str, chunks: int) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidInput(f"--errors {self.folder} is a file; give a folder path for parts")
        if not self.folder.exists():
            return
        for path in sorted(self.folder.iterdir()):
            match = _ERRORS_PART.match(path.name)
            if path.name.endswith(".tmp") or (match and int(match.group(1)) > chunks):
                path.unlink()
            elif match:
                self._recorded.update(_ids_of(_read_part(path, match.group(2))))

    def write(self, job_key: str, chunk: int, rejected: pd.DataFrame) -> None:
        fresh = rejected[~np.isin(_ids_of(rejected), list(self._recorded))]
        if not len(fresh):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        write_frame(fresh, self.folder / f"errors-{chunk:06d}.{self.format}", self.format)
        self._recorded.update(_ids_of(fresh))


def _ids_of(rejected: pd.DataFrame) -> list[str]:
    """The row ids of rejected rows (their first column), as text: a CSV reads them back as
    numbers or strings alike."""
    return [str(v) for v in rejected.iloc[:, 0].tolist()] if len(rejected.columns) else []


def _read_part(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == PARQUET:
        return pd.read_parquet(path)
    if fmt == CSV:
        return pd.read_csv(path)
    return pd.read_json(path, orient="records", lines=True)


def write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write a part under a temporary name, sync it, then rename it into place."""
    temporary = path.with_name(path.name + ".tmp")
    if fmt == PARQUET:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), temporary)
    elif fmt == CSV:
        frame.to_csv(temporary, index=False)
    else:
        frame.to_json(temporary, orient="records", lines=True, date_format="iso")
    _sync(temporary)
    temporary.replace(path)
    _sync_folder(path.parent)


def read_column(path: Path, fmt: str, column: str) -> Array:
    if fmt == PARQUET:
        values: Array = pq.read_table(path, columns=[column]).column(0).to_numpy()
        return values
    if fmt == CSV:
        return pd.read_csv(path, usecols=[column])[column].to_numpy()
    return pd.read_json(path, lines=True)[column].to_numpy()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    _sync_folder(path.parent)


def _sync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class IdSet:
    """Ids already in a sink, for skipping: a sorted array for numbers, a set otherwise."""

    def __init__(self, ids: Array) -> None:
        self._numeric = ids.dtype.kind in "iuf"
        if self._numeric:
            self._sorted = np.unique(ids)
            self._set: set[Any] = set()
        else:
            self._sorted = np.empty(0)
            self._set = {_key(v) for v in ids.tolist()}

    def contains(self, ids: Array) -> Array:
        if self._numeric and ids.dtype.kind in "iuf":
            if not len(self._sorted):
                return np.zeros(len(ids), dtype=bool)
            at = np.searchsorted(self._sorted, ids).clip(max=len(self._sorted) - 1)
            found: Array = self._sorted[at] == ids
            return found
        known = self._set or {_key(v) for v in self._sorted.tolist()}
        return np.fromiter((_key(v) in known for v in ids.tolist()), bool, count=len(ids))


def _key(value: Any) -> Any:
    """Ids compare by value across types: 7, 7.0 and '7' in a CSV are one row."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


# SQL ---------------------------------------------------------------------------------------


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
                found.update(_key(v) for v in connection.scalars(query))
        return np.fromiter((_key(v) in found for v in values), bool, count=len(values))

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
        insert_of = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert_of(self._table)
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
    ids = _ids_of(rejected)
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


def folder_parts(folder: Path) -> Iterable[Path]:
    """The committed parts of a file sink, in order (what a reader should read)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return [folder / part["file"] for part in manifest.get("parts", [])]
