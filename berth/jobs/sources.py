"""Where a batch job's rows come from, a chunk at a time, from a position it can resume at.

Files (CSV, Parquet, JSON lines) are read in order and positioned by the rows consumed, so a
resumed job skips exactly what an earlier run committed. SQL sources are paged by their id
column (keyset pagination: `WHERE id > :last ORDER BY id LIMIT n`): no server-side cursor held
open for hours, and a query that excludes scored rows (`WHERE predicted_at IS NULL`) shrinks
under the job without shifting any page.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from berth.errors import InvalidInput
from berth.jobs.sql import is_sql_url, quote_relation, reason, safe_url, sql_engine
from berth.registry.csv_header import describe, first_row, has_header

Array = np.ndarray[Any, Any]
Position = dict[str, Any]
"""JSON-able: {"rows": n} for files; {"rows": n, "after": last_id} for SQL."""

CSV = "csv"
PARQUET = "parquet"
JSONL = "jsonl"
_FORMATS = {".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET, ".jsonl": JSONL, ".ndjson": JSONL}
_COUNT_BLOCK = 1 << 20


@dataclass(frozen=True)
class Chunk:
    frame: pd.DataFrame
    """The chunk's rows, every column the source has."""
    ids: Array
    """The id of each row: the id column, or the row number in a file without one."""
    position: Position
    """Where the source stands after this chunk."""


class Source(Protocol):
    description: str

    def count(self, position: Position) -> int | None:
        """Rows left after `position`; None when it cannot be known cheaply."""
        ...

    def chunks(self, position: Position, size: int) -> Iterator[Chunk]: ...


def file_format(path: str, what: str) -> str:
    fmt = _FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"{what} {path} has an unknown extension; use .csv, .parquet or .jsonl, or a "
            "SQLAlchemy URL such as postgresql+psycopg://user@host/db"
        )
    return fmt


def open_source(location: str, query: str | None, table: str | None, id_column: str) -> Source:
    if is_sql_url(location):
        if query is None and table is None:
            raise InvalidInput(
                f"a SQL source needs --table NAME or --query 'SELECT ...' to say what to score "
                f"in {safe_url(location)}"
            )
        return SqlSource(location, query, table, id_column)
    if query is not None or table is not None:
        raise InvalidInput("--query and --table apply to a SQL source; --source is a file")
    path = Path(location).expanduser()
    fmt = file_format(location, "--source")
    if not path.is_file():
        raise InvalidInput(f"--source {path} does not exist; give an existing file or a SQL URL")
    if fmt == CSV:
        _refuse_headerless(path)
    return FileSource(path, fmt, id_column)


def _refuse_headerless(path: Path) -> None:
    # Read as a header, its first row would be lost and the columns named after its values.
    row = first_row(path)
    if row is not None and not has_header(row):
        raise InvalidInput(
            f"--source {path} has no header row (its first line, {describe(row)}, holds "
            "values); add a first line with the column names (`berth models show MODEL` "
            "lists the model's)"
        )


class FileSource:
    """A CSV, Parquet or JSON lines file, read in order."""

    def __init__(self, path: Path, fmt: str, id_column: str) -> None:
        self.path = path
        self.format = fmt
        self.id_column = id_column
        self.description = str(path)

    def count(self, position: Position) -> int | None:
        done = int(position.get("rows", 0))
        if self.format == PARQUET:
            rows: int = pq.ParquetFile(self.path).metadata.num_rows
            return max(0, rows - done)
        lines = _count_lines(self.path)
        header = 1 if self.format == CSV else 0
        return max(0, lines - header - done)

    def chunks(self, position: Position, size: int) -> Iterator[Chunk]:
        start = int(position.get("rows", 0))
        try:
            frames = self._frames(start, size)
            offset = start
            for frame in frames:
                if frame.empty:
                    continue
                frame = frame.reset_index(drop=True)
                ids = self._ids(frame, offset)
                offset += len(frame)
                yield Chunk(frame, ids, {"rows": offset})
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise InvalidInput(
                f"could not read {self.path} after row {start}: {exc}; fix the file and run "
                "the same command again (it resumes from the last committed chunk)"
            ) from exc

    def _ids(self, frame: pd.DataFrame, offset: int) -> Array:
        if self.id_column in frame.columns:
            return frame[self.id_column].to_numpy()
        return np.arange(offset, offset + len(frame), dtype=np.int64)

    def _frames(self, start: int, size: int) -> Iterator[pd.DataFrame]:
        if self.format == PARQUET:
            return _parquet_frames(self.path, start, size)
        if self.format == CSV:
            skip = range(1, start + 1) if start else None
            return iter(pd.read_csv(self.path, chunksize=size, skiprows=skip))
        return _jsonl_frames(self.path, start, size)


def _parquet_frames(path: Path, start: int, size: int) -> Iterator[pd.DataFrame]:
    """Row groups before `start` are never read; the first one read is cut at `start`.

    One reader per row group: a single reader over many groups keeps their buffers until it is
    done (RSS grew with the file), while this keeps memory to one group and a chunk.
    """
    parquet = pq.ParquetFile(path)
    first, skip = 0, start
    while first < parquet.num_row_groups:
        rows = parquet.metadata.row_group(first).num_rows
        if skip < rows:
            break
        skip -= rows
        first += 1
    pending: pd.DataFrame | None = None
    for group in range(first, parquet.num_row_groups):
        for batch in parquet.iter_batches(batch_size=size, row_groups=[group]):
            frame = batch.to_pandas()
            if skip:
                cut = min(skip, len(frame))
                frame, skip = frame.iloc[cut:], skip - cut
            # Row-group edges make short batches: join them so every chunk but the last is full.
            pending = frame if pending is None else pd.concat([pending, frame], ignore_index=True)
            while len(pending) >= size:
                yield pending.iloc[:size]
                pending = pending.iloc[size:]
    if pending is not None and len(pending):
        yield pending


def _jsonl_frames(path: Path, start: int, size: int) -> Iterator[pd.DataFrame]:
    with path.open("rb") as handle:
        for _ in itertools.islice(handle, start):
            pass
        while True:
            lines = [line for line in itertools.islice(handle, size) if line.strip()]
            if not lines:
                return
            yield pd.read_json(io.StringIO(b"".join(lines).decode()), lines=True)


def _count_lines(path: Path) -> int:
    count = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(_COUNT_BLOCK):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (0 if last == b"\n" else 1)


class SqlSource:
    """Rows of a table or query, paged by the id column."""

    def __init__(self, url: str, query: str | None, table: str | None, id_column: str) -> None:
        self.url = url
        self.engine: Engine = sql_engine(url, "--source")
        quote = self.engine.dialect.identifier_preparer.quote
        self._id = quote(id_column)
        self.id_column = id_column
        if table is not None:
            relation = quote_relation(self.engine, table)
            self._select = f"SELECT * FROM {relation}"  # noqa: S608 - quoted identifiers
            self.description = f"{safe_url(url)} table {table}"
        else:
            assert query is not None
            self._select = query.strip().rstrip(";")
            self.description = f"{safe_url(url)} query"

    def count(self, position: Position) -> int | None:
        where, params = self._after(position)
        sql = f"SELECT count(*) FROM ({self._select}) AS berth_source {where}"  # noqa: S608
        count: int = self._read(sql, params).to_numpy()[0, 0].item()
        return count

    def chunks(self, position: Position, size: int) -> Iterator[Chunk]:
        done = int(position.get("rows", 0))
        while True:
            where, params = self._after(position)
            sql = (
                f"SELECT * FROM ({self._select}) AS berth_source {where} "  # noqa: S608
                f"ORDER BY {self._id} LIMIT {int(size)}"
            )
            frame = self._read(sql, params)
            if frame.empty:
                return
            if self.id_column not in frame.columns:
                raise InvalidInput(
                    f"the SQL source has no column {self.id_column!r} to page by; pass "
                    f"--id-column with its unique key (columns: {list(frame.columns)})"
                )
            ids = frame[self.id_column].to_numpy()
            done += len(frame)
            position = {"rows": done, "after": _json_value(ids[-1])}
            yield Chunk(frame, ids, position)
            if len(frame) < size:
                return

    def _after(self, position: Position) -> tuple[str, dict[str, Any]]:
        if "after" not in position:
            return "", {}
        return f"WHERE {self._id} > :after", {"after": position["after"]}

    def _read(self, sql: str, params: dict[str, Any]) -> pd.DataFrame:
        try:
            with self.engine.connect() as connection:
                return pd.read_sql(text(sql), connection, params=params)
        except (SQLAlchemyError, pd.errors.DatabaseError) as exc:
            raise InvalidInput(
                f"reading the source {self.description} failed: {reason(exc)}; check --table "
                "or --query, --id-column, and that the database is reachable"
            ) from exc


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value
