"""Whether a CSV file starts with a header row.

A CSV without one would otherwise lose its first row to column names such as "5.1" and "3.5".
The rule, in order:

- a first row made of the known column names (the model's) is a header, even of numbers;
- a first row whose cells are all numbers (or empty) is data, except `0,1,2,...` (the column
  labels pandas writes for a frame built from an array, with or without an index column);
- when the column names are known (the model's), a first row of that width that shares no
  cell with them and holds a number is data;
- anything else is a header.

A first row of text is taken as a header even when the file has none: text cannot be told from
column names.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path


def first_row(path: Path) -> list[str] | None:
    """The cells of the first row of a CSV file, or None when it is empty or unreadable."""
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            row = next(csv.reader(handle), None)
    except (OSError, csv.Error):
        return None
    return None if not row else [cell.strip() for cell in row]


def has_header(row: Sequence[str] | None, names: Sequence[str] | None = None) -> bool:
    """Whether `row` (a CSV file's first) names columns rather than holding values."""
    if not row:
        return True
    known = {str(name) for name in names or ()}
    if known and set(row) <= known:
        return True
    numbers = [cell for cell in row if _number(cell)]
    if not numbers:
        return True
    if all(cell == "" or _number(cell) for cell in row):
        return _default_labels(row)
    if known and len(row) == len(names or ()):
        return bool(set(row) & known)
    return True


def describe(row: Sequence[str], limit: int = 60) -> str:
    """The row as it reads in the file, shortened for a message."""
    text = ",".join(row)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _number(cell: str) -> bool:
    if not cell:
        return False
    try:
        value = float(cell)
    except ValueError:
        return False
    # "nan" and "inf" parse as floats but are likelier names than values in a first row.
    return math.isfinite(value) or cell.lower() not in ("nan", "inf", "infinity", "-inf")


def _default_labels(row: Sequence[str]) -> bool:
    """`0,1,...,n-1` (or `,0,1,...`): the header pandas writes for unnamed columns."""
    labels = list(row[1:]) if row and row[0] == "" else list(row)
    return labels == [str(i) for i in range(len(labels))]
