"""Signatures: the inputs a version accepts and the outputs it returns.

Two kinds:
- tensor: named arrays with a dtype and a shape (`-1` = any size; the first axis is the batch);
- tabular: named columns with a dtype, nullability and an optional allowed range.

A signature is stored as JSON with the version and used by serving to validate requests
before they reach the model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from berth.errors import InvalidInput
from berth.registry.csv_header import describe, first_row, has_header

# numpy and pandas are imported by the functions that read and infer from data: a signature
# read from the registry needs neither, and every CLI command reads some.
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

TENSOR_DTYPES = (
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "string",
)
COLUMN_DTYPES = ("bool", "int64", "float64", "string")

SignatureKind = Literal["tensor", "tabular"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in TENSOR_DTYPES:
            raise InvalidInput(
                f"tensor '{self.name}': unknown dtype '{self.dtype}'; use one of {', '.join(TENSOR_DTYPES)}"
            )
        if not self.shape or any(d < -1 or d == 0 for d in self.shape):
            raise InvalidInput(
                f"tensor '{self.name}': shape {list(self.shape)} is not valid; "
                "give positive sizes, -1 for any size, batch axis first"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    dtype: str
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in COLUMN_DTYPES:
            raise InvalidInput(
                f"column '{self.name}': unknown dtype '{self.dtype}'; use one of {', '.join(COLUMN_DTYPES)}"
            )
        bounds = [b for b in (self.minimum, self.maximum) if b is not None]
        if bounds and not self.numeric:
            raise InvalidInput(
                f"column '{self.name}': minimum and maximum need a numeric dtype "
                f"(int64 or float64), got {self.dtype}"
            )
        if any(math.isnan(b) for b in bounds):
            raise InvalidInput(
                f"column '{self.name}': minimum and maximum must be numbers, got NaN"
            )
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise InvalidInput(
                f"column '{self.name}': minimum {self.minimum:g} is greater than "
                f"maximum {self.maximum:g}; no value could pass"
            )

    @property
    def numeric(self) -> bool:
        return self.dtype in ("int64", "float64")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "nullable": self.nullable}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


@dataclass(frozen=True)
class Signature:
    kind: SignatureKind
    inputs: tuple[TensorSpec, ...] = ()
    columns: tuple[ColumnSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind == "tensor" and not self.inputs:
            raise InvalidInput("a tensor signature needs at least one input")
        if self.kind == "tabular" and not self.columns:
            raise InvalidInput("a tabular signature needs at least one column")
        names = [c.name for c in self.columns] or [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise InvalidInput(f"signature has duplicate input names: {names}")

    @property
    def input_names(self) -> list[str]:
        return (
            [c.name for c in self.columns]
            if self.kind == "tabular"
            else [t.name for t in self.inputs]
        )

    def with_outputs(self, outputs: tuple[TensorSpec, ...]) -> Signature:
        return Signature(kind=self.kind, inputs=self.inputs, columns=self.columns, outputs=outputs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "tabular":
            out["columns"] = [c.to_dict() for c in self.columns]
        else:
            out["inputs"] = [t.to_dict() for t in self.inputs]
        out["outputs"] = [t.to_dict() for t in self.outputs]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        try:
            outputs = tuple(_tensor_spec(o) for o in _list(data.get("outputs", []), "outputs"))
            if "columns" in data:
                columns = tuple(
                    ColumnSpec(
                        name=str(c["name"]),
                        dtype=str(c["dtype"]),
                        nullable=_bool(c.get("nullable", False), "nullable"),
                        minimum=_optional_float(c.get("minimum"), "minimum"),
                        maximum=_optional_float(c.get("maximum"), "maximum"),
                    )
                    for c in _list(data["columns"], "columns")
                )
                return cls(kind="tabular", columns=columns, outputs=outputs)
            inputs = tuple(_tensor_spec(t) for t in _list(data["inputs"], "inputs"))
            return cls(kind="tensor", inputs=inputs, outputs=outputs)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            problem = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise InvalidInput(
                'signature JSON is not valid: expected {"columns": [{"name", "dtype"}, ...]} '
                f'or {{"inputs": [{{"name", "dtype", "shape"}}, ...]}} ({problem})'
            ) from exc


# from_dict turns wrong JSON types into TypeError, reported as one InvalidInput: a string
# "false" must not become a true `nullable`, nor "12" the shape [1, 2].


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"'{key}' must be a list, got {type(value).__name__}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"'{key}' must be true or false, got {value!r}")
    return value


def _optional_float(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"'{key}' must be a number, got {value!r}")
    return float(value)


def _tensor_spec(data: dict[str, Any]) -> TensorSpec:
    shape = _list(data["shape"], "shape")
    if any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
        raise TypeError(f"'shape' must hold integers, got {shape!r}")
    return TensorSpec(name=str(data["name"]), dtype=str(data["dtype"]), shape=tuple(shape))


def numpy_dtype_name(dtype: np.dtype[Any]) -> str:
    """The signature dtype for a numpy dtype (object and unicode arrays are strings)."""
    if dtype.kind in ("U", "S", "O"):
        return "string"
    name = dtype.name
    if name not in TENSOR_DTYPES:
        raise InvalidInput(
            f"arrays of dtype {name} are not supported; convert them to float32/float64"
        )
    return name


def infer_from_array(sample: np.ndarray[Any, Any], name: str = "input") -> Signature:
    if sample.ndim == 0:
        raise InvalidInput("sample array must have a batch axis; give at least one row")
    spec = TensorSpec(
        name=name, dtype=numpy_dtype_name(sample.dtype), shape=(-1, *sample.shape[1:])
    )
    return Signature(kind="tensor", inputs=(spec,))


def infer_from_frame(sample: pd.DataFrame) -> Signature:
    names = [str(name) for name in sample.columns]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidInput(f"sample has duplicate column names {duplicates}; rename them")
    columns = []
    for position, name in enumerate(sample.columns):
        series = sample.iloc[:, position]
        columns.append(
            ColumnSpec(
                name=str(name), dtype=_column_dtype(series), nullable=bool(series.isna().any())
            )
        )
    return Signature(kind="tabular", columns=tuple(columns))


def _column_dtype(series: pd.Series[Any]) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int64"
    if pd.api.types.is_float_dtype(series):
        return "float64"
    present = series.dropna()
    if series.dtype == object and len(present) and all(isinstance(v, bool) for v in present):
        return "bool"  # a bool column with missing values (CSV True/False/empty) is object
    return "string"


def read_sample(
    path: Path, columns: Sequence[str] | None = None
) -> np.ndarray[Any, Any] | pd.DataFrame:
    """Read sample data: `.npy` as an array; CSV, Parquet, JSON and JSON lines as a table.

    `columns` are the names of the model's input columns, when known: a CSV file without a
    header row (see `berth.registry.csv_header`) gets them, or the positional names "0", "1",
    ... when they are not known.
    """
    import numpy as np
    import pandas as pd

    suffix = path.suffix.lower()
    if not path.exists():
        raise InvalidInput(
            f"sample file {path} does not exist; pass an existing .csv/.parquet/.json/.npy"
        )
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if suffix == ".csv":
            return _read_csv(path, columns)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            return pd.DataFrame(json.loads(path.read_text()))
    except (ValueError, TypeError, OSError, RecursionError) as exc:
        raise InvalidInput(f"could not read sample file {path}: {exc}") from exc
    raise InvalidInput(
        f"sample file {path} has an unknown extension; use .csv, .parquet, .json, .jsonl or .npy"
    )


def _read_csv(path: Path, columns: Sequence[str] | None) -> pd.DataFrame:
    import pandas as pd

    row = first_row(path)
    if row is None or has_header(row, columns):
        return pd.read_csv(path)
    if columns is None:
        frame = pd.read_csv(path, header=None)
        frame.columns = [str(position) for position in range(frame.shape[1])]
        return frame
    if len(columns) != len(row):
        raise InvalidInput(
            f"{path} has no header row (its first line, {describe(row)}, holds values) and "
            f"{len(row)} columns, while the model takes {len(columns)}: {', '.join(columns)}; "
            "add a first line with the column names"
        )
    return pd.read_csv(path, header=None, names=list(columns))


def infer_signature(sample: np.ndarray[Any, Any] | pd.DataFrame) -> Signature:
    import pandas as pd

    if isinstance(sample, pd.DataFrame):
        return infer_from_frame(sample)
    return infer_from_array(sample)


def load_signature_file(path: Path) -> Signature:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
        raise InvalidInput(f"could not read signature file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"signature file {path} must hold a JSON object")
    return Signature.from_dict(data)
