"""The inputs a fitted scikit-learn estimator declares, for registering it without a sample.

An estimator fitted on a DataFrame knows its column names (`feature_names_in_`); one fitted on an
array knows its width (`n_features_in_`). Names alone do not give types, so the first step is
read for what it does with each column:

- a column an encoder fitted (`categories_` of OneHotEncoder, OrdinalEncoder) has the dtype of
  its categories (strings for text categories), and is nullable when NaN is a category;
- a column that goes through an imputer (SimpleImputer, KNNImputer, ...) is nullable;
- every other column is a float64 number, which is what scikit-learn turns it into.

Besides the signature comes one probe row built from it (the first category of each encoded
column, 0 elsewhere): the runtime predicts on it to learn the outputs, and to prove the declared
inputs are ones the model accepts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from berth.registry.signature import ColumnSpec, Signature, TensorSpec

_FLOAT = "float64"


@dataclass(frozen=True)
class _Column:
    dtype: str = _FLOAT
    nullable: bool = False
    first: Any = 0.0
    """A value the model accepts, for the probe row."""


@dataclass(frozen=True)
class DeclaredInputs:
    signature: Signature
    probe: pd.DataFrame | np.ndarray[Any, Any]
    source: str
    """Where the inputs came from, e.g. "feature_names_in_"."""


def declared_inputs(model: Any) -> DeclaredInputs | None:
    """The estimator's input signature and a probe row, or None when it does not tell."""
    names = getattr(model, "feature_names_in_", None)
    width = getattr(model, "n_features_in_", None)
    if names is not None:
        columns = [str(name) for name in names]
        kinds = _column_kinds(_first_step(model), columns)
        specs = tuple(
            ColumnSpec(name=name, dtype=kinds[name].dtype, nullable=kinds[name].nullable)
            for name in columns
        )
        probe = pd.DataFrame(
            {
                spec.name: np.asarray([kinds[spec.name].first], dtype=_numpy(spec.dtype))
                for spec in specs
            }
        )
        return DeclaredInputs(Signature(kind="tabular", columns=specs), probe, "feature_names_in_")
    if isinstance(width, int | np.integer) and width > 0:
        tensor = TensorSpec(name="input", dtype=_FLOAT, shape=(-1, int(width)))
        probe_array = np.zeros((1, int(width)), dtype=np.float64)
        return DeclaredInputs(
            Signature(kind="tensor", inputs=(tensor,)), probe_array, "n_features_in_"
        )
    return None


def _first_step(model: Any) -> Any:
    """The step that receives the raw columns (through nested pipelines)."""
    while hasattr(model, "steps") and model.steps:
        model = model.steps[0][1]
    return model


def _column_kinds(first: Any, columns: list[str]) -> dict[str, _Column]:
    kinds = dict.fromkeys(columns, _Column())
    transformers = getattr(first, "transformers_", None)
    if transformers is None:  # no ColumnTransformer: the first step sees every column
        kinds.update(_kinds(first, columns))
        return kinds
    for _, transformer, selected in transformers:
        picked = _selected(selected, columns)
        if isinstance(transformer, str):  # "drop" or "passthrough"
            continue
        kinds.update(_kinds(transformer, picked))
    return kinds


def _kinds(transformer: Any, columns: list[str]) -> dict[str, _Column]:
    """What one transformer (or a pipeline of them) does to its columns."""
    nullable = False
    for step in _steps(transformer):
        if type(step).__name__.endswith("Imputer"):
            nullable = True
        categories = getattr(step, "categories_", None)
        if categories is not None and len(categories) == len(columns):
            return {
                name: _encoded(values, nullable)
                for name, values in zip(columns, categories, strict=True)
            }
    return {name: _Column(nullable=nullable) for name in columns}


def _encoded(categories: Any, nullable: bool) -> _Column:
    values = np.asarray(categories)
    present = [v for v in values.tolist() if not _missing(v)]
    dtype = _category_dtype(values.dtype.kind, present)
    first = present[0] if present else ("" if dtype == "string" else 0.0)
    return _Column(dtype=dtype, nullable=nullable or len(present) < len(values), first=first)


def _category_dtype(kind: str, present: list[Any]) -> str:
    """The column dtype of an encoder's categories (object arrays by what they hold)."""
    if kind == "O":
        if present and all(isinstance(v, bool) for v in present):
            kind = "b"
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            kind = "i"
        elif present and all(isinstance(v, int | float) for v in present):
            kind = "f"
    return {"b": "bool", "i": "int64", "u": "int64", "f": _FLOAT}.get(kind, "string")


def _steps(transformer: Any) -> Iterator[Any]:
    if hasattr(transformer, "steps"):
        for _, step in transformer.steps:
            yield from _steps(step)
    else:
        yield transformer


def _selected(selected: Any, columns: list[str]) -> list[str]:
    """The names a ColumnTransformer entry selects: names, positions, a slice or a mask."""
    if isinstance(selected, str):
        return [selected]
    if isinstance(selected, int | np.integer):
        return [columns[int(selected)]]
    if isinstance(selected, slice):
        return columns[selected]
    items = list(np.asarray(selected).tolist()) if selected is not None else []
    if items and all(isinstance(i, bool) for i in items):
        return [name for name, keep in zip(columns, items, strict=False) if keep]
    return [columns[i] if isinstance(i, int) else str(i) for i in items]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _numpy(dtype: str) -> Any:
    return object if dtype == "string" else dtype
