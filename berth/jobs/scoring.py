"""Score a chunk of rows with a loaded version: results for good rows, reasons for bad ones.

Rows pass the same signature validation as a request to the server, then go to the same
runtime. A chunk is validated and predicted whole; only when that fails is it split in halves
until each failing row stands alone, so a few bad rows cost a few extra calls and a clean chunk
costs none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import BerthError, InvalidInput
from berth.registry.signature import Signature
from berth.registry.versions import VersionInfo
from berth.runtimes.base import Prediction, Runtime
from berth.serving.table_input import model_input

Array = np.ndarray[Any, Any]

PREDICTION = "prediction"
PROBABILITY_PREFIX = "probability_"
REJECT_COLUMNS = ("reason", "row", "model", "version", "rejected_at")
_ROW_BY_ROW = 16
"""A failing piece this small is tried row by row rather than halved again."""
_UNSAFE = re.compile(r"[^0-9A-Za-z_]+")


@dataclass(frozen=True)
class Scored:
    results: pd.DataFrame
    """id, prediction, probability_<class>..., model, version, predicted_at: one row per good row."""
    rejected: pd.DataFrame
    """id, reason, row (the input as JSON), model, version, rejected_at."""


class Scorer:
    def __init__(
        self,
        version: VersionInfo,
        runtime: Runtime,
        id_column: str,
        features: tuple[str, ...] | None = None,
        text_source: bool = False,
    ) -> None:
        self.version = version
        self.text_source = text_source
        """CSV: a numeric column with one stray word arrives as text; read its numbers back."""
        self.runtime = runtime
        self.id_column = id_column
        self.features = features
        signature = version.signature
        if signature.kind == "tensor" and len(signature.inputs) != 1:
            raise InvalidInput(
                f"{version.ref} takes {len(signature.inputs)} input tensors; batch jobs score "
                "tabular models and models with one input tensor"
            )
        if signature.kind == "tabular" and features and len(features) != len(signature.columns):
            raise InvalidInput(
                f"--features names {len(features)} columns but {version.ref} takes "
                f"{len(signature.columns)}: {signature.input_names}"
            )

    def input_columns(self, available: list[str]) -> list[str]:
        """The source columns that feed the model, in the model's order; checked up front so a
        job with a wrong column list fails before it writes anything."""
        signature = self.version.signature
        if self.features:
            wanted = list(self.features)
        elif signature.kind == "tabular":
            wanted = signature.input_names
        else:
            wanted = [c for c in available if c != self.id_column]
        missing = [c for c in wanted if c not in available]
        if missing:
            hint = "" if self.features else "; name the source's columns with --features a,b,c"
            raise InvalidInput(
                f"the source has no column {missing[0]!r} that {self.version.ref} needs "
                f"(source columns: {available}){hint}"
            )
        return wanted

    def score(self, frame: pd.DataFrame, ids: Array, at: datetime) -> Scored:
        table = self._inputs(frame)
        if not len(table):
            return Scored(self._results(ids, [], at), self._rejected(frame, ids, [], at))
        pieces, failures = self._isolate(table, np.arange(len(frame)))
        return Scored(self._results(ids, pieces, at), self._rejected(frame, ids, failures, at))

    # internals -----------------------------------------------------------------------------

    def _inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        columns = self.input_columns(list(frame.columns))
        table = frame[columns]
        signature = self.version.signature
        if signature.kind == "tabular" and columns != signature.input_names:
            table = table.set_axis(signature.input_names, axis=1)
        if self.text_source and signature.kind == "tabular":
            table = _numbers_from_text(table, signature)
        return table

    def _attempt(self, table: pd.DataFrame) -> Prediction:
        inputs = model_input(self.version.signature, table.reset_index(drop=True), "input")
        return self.runtime.predict(inputs)

    def _isolate(
        self, table: pd.DataFrame, rows: Array
    ) -> tuple[list[tuple[Array, Prediction]], list[tuple[int, str]]]:
        """Predict `rows` of `table`; on failure split until each failing row stands alone."""
        try:
            return [(rows, self._attempt(table.iloc[rows]))], []
        except Exception as exc:
            if len(rows) == 1:
                return [], [(int(rows[0]), _reason(exc))]
            failing = exc
        if len(rows) <= _ROW_BY_ROW:
            halves = [rows[i : i + 1] for i in range(len(rows))]
        else:
            middle = len(rows) // 2
            halves = [rows[:middle], rows[middle:]]
        pieces: list[tuple[Array, Prediction]] = []
        failures: list[tuple[int, str]] = []
        for half in halves:
            ok, bad = self._isolate(table, half)
            pieces += ok
            failures += bad
        if not failures:  # the whole failed but every part passed: not a row's fault
            raise failing
        return pieces, failures

    def _results(
        self, ids: Array, pieces: list[tuple[Array, Prediction]], at: datetime
    ) -> pd.DataFrame:
        if not pieces:
            return pd.DataFrame(columns=[self.id_column, PREDICTION])
        rows = np.concatenate([r for r, _ in pieces])
        predictions = [p for _, p in pieces]
        columns: dict[str, Any] = {self.id_column: ids[rows]}
        columns[PREDICTION] = _prediction_column(
            np.concatenate([p.predictions for p in predictions])
        )
        first = predictions[0]
        if first.probabilities is not None and first.classes is not None:
            probabilities = np.concatenate([np.asarray(p.probabilities) for p in predictions])
            for index, name in enumerate(probability_columns(first.classes)):
                columns[name] = probabilities[:, index].astype(np.float64)
        columns["model"] = self.version.model
        columns["version"] = self.version.number
        columns["predicted_at"] = pd.Timestamp(at)
        return pd.DataFrame(columns)

    def _rejected(
        self, frame: pd.DataFrame, ids: Array, failures: list[tuple[int, str]], at: datetime
    ) -> pd.DataFrame:
        if not failures:
            return pd.DataFrame(columns=[self.id_column, *REJECT_COLUMNS])
        rows = [row for row, _ in failures]
        subset = frame.iloc[rows]
        records = subset.astype(object).where(subset.notna(), None).to_dict("records")
        return pd.DataFrame(
            {
                self.id_column: ids[rows],
                "reason": [reason for _, reason in failures],
                "row": [json.dumps(r, default=_json_default) for r in records],
                "model": self.version.model,
                "version": self.version.number,
                "rejected_at": pd.Timestamp(at),
            }
        )


def _numbers_from_text(table: pd.DataFrame, signature: Signature) -> pd.DataFrame:
    """Numeric columns read as text get their parseable values back as numbers; the rest stay
    text, so validation rejects exactly those rows and names the offending value."""
    changed = {}
    for spec in signature.columns:
        column = table[spec.name]
        if spec.numeric and column.dtype.kind == "O":
            numbers = pd.to_numeric(column, errors="coerce")
            changed[spec.name] = column.where(numbers.isna(), numbers.astype(object))
    return table.assign(**changed) if changed else table


def probability_columns(classes: list[Any]) -> list[str]:
    """`probability_<class>` per class, made safe as a column name in every sink."""
    names: list[str] = []
    for label in classes:
        name = PROBABILITY_PREFIX + (_UNSAFE.sub("_", str(label)).strip("_") or "class")
        while name in names:
            name += "_"
        names.append(name)
    return names


def _prediction_column(values: Array) -> Array:
    if values.ndim == 1:
        return values
    # Several outputs per row: one JSON list per row keeps every sink's column scalar.
    return np.array([json.dumps(row) for row in values.tolist()], dtype=object)


def _reason(exc: Exception) -> str:
    if isinstance(exc, BerthError):
        # Validation speaks of "row 0" of the single row it was given; the row has an id.
        return exc.message.replace(": row 0 ", ": ")
    return f"the model failed on this row: {type(exc).__name__}: {exc}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return str(value)
