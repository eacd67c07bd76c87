"""Table rows as portable, typed JSON Lines, so a backup restores into any database engine.

A table's file starts with a header line naming its columns and their kinds; each further line
is one row, a list of values in that order. Kinds: `int`, `float`, `bool`, `str`, `json` (any
JSON value, stored as is) and `datetime` (an ISO 8601 instant in UTC). The file is gzip'd
with no timestamp in its header, so the same rows always give the same bytes (and digest).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Integer, Table

from berth.errors import InvalidInput
from berth.store.tables import UTCDateTime


def kind(column: Column[Any]) -> str:
    """How `column`'s values are written."""
    kind_of = column.type
    if isinstance(kind_of, UTCDateTime | DateTime):
        return "datetime"
    if isinstance(kind_of, JSON):
        return "json"
    if isinstance(kind_of, Boolean):
        return "bool"
    if isinstance(kind_of, Integer):
        return "int"
    if isinstance(kind_of, Float):
        return "float"
    return "str"


def encode(table: Table, rows: Iterable[Sequence[Any]]) -> tuple[bytes, int]:
    """The gzip'd JSON Lines of `rows` (in `table`'s column order) and how many there were."""
    columns = [{"name": c.name, "kind": kind(c)} for c in table.columns]
    kinds = [c["kind"] for c in columns]
    lines = [json.dumps({"table": table.name, "columns": columns}, sort_keys=True)]
    for row in rows:
        values = [_encode_value(k, v) for k, v in zip(kinds, row, strict=True)]
        lines.append(json.dumps(values, separators=(",", ":"), ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    return gzip.compress(text.encode(), compresslevel=6, mtime=0), len(lines) - 1


def decode(data: bytes, backend: str) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """The column names and rows (as column -> value, typed for `backend`) of a table file."""
    lines = gzip.decompress(data).decode().splitlines()
    if not lines:
        raise InvalidInput("a table file of the backup is empty; verify the backup")
    header = json.loads(lines[0])
    names = [c["name"] for c in header["columns"]]
    kinds = [c["kind"] for c in header["columns"]]

    def rows() -> Iterator[dict[str, Any]]:
        for line in lines[1:]:
            values = json.loads(line)
            yield {
                n: _decode_value(k, v, backend)
                for n, k, v in zip(names, kinds, values, strict=True)
            }

    return names, rows()


def _encode_value(kind_of: str, value: Any) -> Any:
    if value is None:
        return None
    if kind_of == "datetime":
        instant = value if value.tzinfo else value.replace(tzinfo=UTC)
        return instant.astimezone(UTC).isoformat()
    return value


def _decode_value(kind_of: str, value: Any, backend: str) -> Any:
    if value is None:
        return None
    if kind_of == "datetime":
        instant = datetime.fromisoformat(value).astimezone(UTC)
        # Rows go in through reflected tables: SQLite's DATETIME takes the UTC wall clock (as
        # Berth's UTCDateTime writes it), PostgreSQL's timestamptz the aware instant.
        return instant.replace(tzinfo=None) if backend == "sqlite" else instant
    if kind_of == "bool":
        return bool(value)
    return value
