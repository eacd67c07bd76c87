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

from pathlib import Path

from berth.errors import InvalidInput
from berth.jobs.file_sinks import ERRORS_FOLDER, FileSink, FolderErrors
from berth.jobs.sink_types import ErrorWriter, Sink
from berth.jobs.sources import JSONL, file_format
from berth.jobs.sql import is_sql_url, safe_url
from berth.jobs.sql_sinks import SqlErrors, SqlSink


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
