"""The rows an optimized version is checked on.

`--data FILE` gives them (CSV/Parquet/JSON with the signature's columns, or .npy for tensor
models). Labelled rows let a lossy optimization (int8, pruning) be judged by accuracy: a table's
`label` column (when no input has that name), or an .npz file holding `inputs` (or an array
named like the signature's input) and `labels`. Without it the check uses what the registry holds: the version's example rows, topped
up to `MIN_ROWS` with rows generated deterministically (a fixed seed), each feature on its own:

- from the reference statistics when the version has them (the stored sample of each numeric
  feature, the frequencies of each categorical one);
- else around the example rows: a normal spread around their mean, kept inside the signature's
  declared range, or uniform over the range when there are no examples.

Every row goes through the serving validation of the signature, so both runtimes get exactly
what a request would give them. The sources say how many rows came from where.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import InvalidInput
from berth.registry.profile import OTHER
from berth.registry.signature import ColumnSpec, Signature, TensorSpec, read_sample
from berth.registry.versions import VersionInfo
from berth.runtimes.base import ModelInput
from berth.serving.table_input import CheckInput, model_input, single_input
from berth.serving.validation import validate_columns, validate_tensor

Array = np.ndarray[Any, Any]

MIN_ROWS = 1_000
"""Rows the check runs on without --data; at 99.9% agreement one disagreeing row fails it."""
MAX_ROWS = 100_000
"""A larger --data file is checked on its first rows."""
SEED = 0
GENERATED = "generated rows"
LABEL_COLUMN = "label"
NPZ_INPUTS = "inputs"
NPZ_LABELS = "labels"


@dataclass(frozen=True)
class CheckData:
    inputs: CheckInput
    sources: tuple[tuple[str, int], ...]
    """(where from, rows) in row order, e.g. (("example rows", 3), ("generated rows", 997))."""
    generated_from: str | None = None
    """What generated rows were drawn from, if there are any."""
    labels: Array | None = None
    """The true label of each row, when the rows came labelled."""

    @property
    def rows(self) -> int:
        return len(self.inputs)

    def origin(self, row: int) -> str:
        """Where a row came from, e.g. 'example rows #2'."""
        start = 0
        for name, count in self.sources:
            if row < start + count:
                return f"{name} #{row - start}"
            start += count
        return f"row {row}"

    def take(self, rows: Sequence[int] | Array) -> ModelInput:
        if isinstance(self.inputs, pd.DataFrame):
            return self.inputs.iloc[np.asarray(rows)].reset_index(drop=True)
        picked: Array = self.inputs[np.asarray(rows)]
        return picked

    def describe(self) -> str:
        """e.g. '3 example rows, 997 rows generated from the reference statistics'."""
        return ", ".join(self._describe(name, count) for name, count in self.sources)

    def _describe(self, name: str, count: int) -> str:
        if name == GENERATED and self.generated_from:
            return f"{count} rows generated from {self.generated_from}"
        return f"{count} {name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sources": dict(self.sources),
            "generated_from": self.generated_from,
            "labelled": self.labels is not None,
            "description": self.describe(),
        }


def check_data(version: VersionInfo, path: Path | None = None) -> CheckData:
    """The rows to check `version`'s optimized form on: `path`'s, or the registry's topped up."""
    if path is not None:
        return _from_file(version.signature, path.expanduser())
    stats = version.reference_stats
    examples = None
    if version.example:
        examples = model_input(version.signature, _example_table(version), "example rows")
    if examples is None and not stats:
        raise InvalidInput(
            f"{version.ref} has no example rows or reference statistics to check the optimized "
            "model on; pass --data FILE with rows of its input (.csv/.parquet, or .npy)"
        )
    sources: list[tuple[str, int]] = []
    parts: list[CheckInput] = []
    if examples is not None:
        sources.append(("example rows", len(examples)))
        parts.append(examples)
    missing = MIN_ROWS - sum(len(p) for p in parts)
    if missing <= 0:
        return CheckData(_concat(parts), tuple(sources))
    parts.append(_generate(version.signature, examples, stats, missing))
    sources.append((GENERATED, missing))
    where = "the reference statistics" if stats else "the example rows and signature ranges"
    return CheckData(_concat(parts), tuple(sources), where)


def _from_file(signature: Signature, path: Path) -> CheckData:
    if not path.is_file():
        raise InvalidInput(
            f"--data {path} does not exist; give a .csv/.parquet/.json file with the "
            "signature's columns, or a .npy array for a tensor model"
        )
    table, labels = _labelled(signature, path)
    total = len(table)
    if total == 0:
        raise InvalidInput(f"--data {path} holds no rows")
    name = f"rows of {path.name}"
    if total > MAX_ROWS:
        table = table[:MAX_ROWS]
        labels = None if labels is None else labels[:MAX_ROWS]
        name = f"rows of {path.name} (the first of {total})"
    inputs = model_input(signature, table, f"--data {path.name}")
    return CheckData(inputs, ((name, len(inputs)),), labels=labels)


def _labelled(signature: Signature, path: Path) -> tuple[CheckInput, Array | None]:
    """The rows of a --data file, and their labels if it has them."""
    if path.suffix.lower() == ".npz":
        return _npz(signature, path)
    table = read_sample(path, signature.input_names if signature.kind == "tabular" else None)
    if (
        isinstance(table, pd.DataFrame)
        and LABEL_COLUMN in table.columns
        and LABEL_COLUMN not in signature.input_names
    ):
        return table.drop(columns=[LABEL_COLUMN]), table[LABEL_COLUMN].to_numpy()
    return table, None


def _npz(signature: Signature, path: Path) -> tuple[Array, Array | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"could not read --data {path.name}: {exc}") from exc
    names = [n for n in (NPZ_INPUTS, *signature.input_names) if n in arrays]
    if not names:
        raise InvalidInput(
            f"--data {path.name} holds {', '.join(arrays) or 'no arrays'}; save the rows as "
            f"'{NPZ_INPUTS}' (and their labels as '{NPZ_LABELS}'): "
            "numpy.savez(path, inputs=x, labels=y)"
        )
    inputs, labels = arrays[names[0]], arrays.get(NPZ_LABELS)
    if labels is not None and len(labels) != len(inputs):
        raise InvalidInput(
            f"--data {path.name} has {len(inputs)} rows but {len(labels)} labels; give one "
            "label per row"
        )
    return inputs, labels


def _example_table(version: VersionInfo) -> CheckInput:
    example = version.example or []
    if version.signature.kind == "tabular":
        return pd.DataFrame(list(example))
    spec = single_input(version.signature)
    return np.asarray(example, dtype=object if spec.dtype == "string" else spec.dtype)


def _concat(parts: list[CheckInput]) -> CheckInput:
    frames = [p for p in parts if isinstance(p, pd.DataFrame)]
    if frames:
        return pd.concat(frames, ignore_index=True)
    return np.concatenate([np.asarray(p) for p in parts])


# generated rows ----------------------------------------------------------------------------


def _generate(
    signature: Signature, examples: CheckInput | None, stats: Mapping[str, Any] | None, rows: int
) -> CheckInput:
    rng = np.random.default_rng(SEED)
    features: Mapping[str, Any] = (stats or {}).get("features", {})
    if signature.kind == "tabular":
        frame = examples if isinstance(examples, pd.DataFrame) else None
        arrays = {
            column.name: _values(
                _column_kind(column),
                features.get(column.name),
                None if frame is None else frame[column.name].to_numpy(),
                (column.minimum, column.maximum),
                rows,
                rng,
            )
            for column in signature.columns
        }
        return validate_columns(signature, arrays, "generated rows")
    spec = single_input(signature)
    array = None if examples is None else np.asarray(examples)
    return validate_tensor(spec, _tensor(spec, array, features, rows, rng), "generated rows")


def _tensor(
    spec: TensorSpec,
    examples: Array | None,
    features: Mapping[str, Any],
    rows: int,
    rng: np.random.Generator,
) -> Array:
    kind = _tensor_kind(spec.dtype)
    bounds = _dtype_bounds(spec.dtype)
    if len(spec.shape) == 1:
        return _values(kind, features.get(spec.name), examples, bounds, rows, rng)
    if len(spec.shape) == 2:
        width = _width(spec, examples, features)
        columns = [
            _values(
                kind,
                features.get(f"{spec.name}[{i}]"),
                None if examples is None else examples[:, i],
                bounds,
                rows,
                rng,
            )
            for i in range(width)
        ]
        return np.stack(columns, axis=1)
    if examples is None or not len(examples):
        raise InvalidInput(
            f"input '{spec.name}' has shape {list(spec.shape)}; rows of it cannot be generated "
            "without example rows, so pass --data FILE.npy"
        )
    picked: Array = examples[rng.integers(0, len(examples), rows)]
    if kind != "float":
        return picked
    numbers = examples.astype(np.float64)
    spread = np.std(numbers, axis=0) + 0.05 * np.abs(numbers).mean(axis=0)
    jittered: Array = picked + rng.normal(size=picked.shape) * spread
    return jittered


def _width(spec: TensorSpec, examples: Array | None, features: Mapping[str, Any]) -> int:
    if spec.shape[1] != -1:
        return spec.shape[1]
    if examples is not None and examples.ndim == 2:
        return int(examples.shape[1])
    return sum(1 for f in features.values() if f.get("input") == spec.name)


def _values(
    kind: str,
    feature: Mapping[str, Any] | None,
    examples: Array | None,
    bounds: tuple[float | None, float | None],
    rows: int,
    rng: np.random.Generator,
) -> Array:
    """`rows` values of one feature: from its reference statistics, its examples or its range."""
    present = None if examples is None else _present(examples)
    if feature is not None and feature.get("sample"):
        values: Array = rng.choice(np.asarray(feature["sample"], dtype=np.float64), rows)
    elif feature is not None and feature.get("frequencies"):
        return _categories(kind, feature["frequencies"], rows, rng)
    elif present is not None and len(present) and kind in ("string", "bool"):
        return rng.choice(np.asarray(present, dtype=object), rows)
    elif present is not None and len(present):
        numbers = present.astype(np.float64)
        center = float(numbers.mean())
        spread = max(float(numbers.std()), 0.25 * abs(center), 1.0 if kind == "int" else 1e-3)
        values = rng.normal(center, spread, rows)
    elif kind == "bool":
        return rng.random(rows) < 0.5
    elif kind in ("int", "float") and None not in bounds:
        low, high = float(bounds[0] or 0.0), float(bounds[1] or 0.0)
        values = rng.uniform(low, high, rows)
    else:
        raise InvalidInput(
            "cannot generate check rows: a feature has no example values, reference statistics "
            "or declared range; pass --data FILE with rows of the model's input"
        )
    low = -np.inf if bounds[0] is None else bounds[0]
    high = np.inf if bounds[1] is None else bounds[1]
    values = np.clip(values, low, high)
    return np.round(values).astype(np.int64) if kind == "int" else values


def _categories(
    kind: str, frequencies: Mapping[str, float], rows: int, rng: np.random.Generator
) -> Array:
    names = [name for name, share in frequencies.items() if name != OTHER and share > 0]
    if not names:
        raise InvalidInput("cannot generate check rows: a categorical feature has no categories")
    shares = np.asarray([frequencies[name] for name in names], dtype=np.float64)
    picked = rng.choice(np.asarray(names, dtype=object), rows, p=shares / shares.sum())
    if kind == "bool":
        return np.asarray([value == "True" for value in picked])
    return picked


def _present(values: Array) -> Array:
    return np.asarray([v for v in values.tolist() if v is not None and v == v], dtype=object)


def _column_kind(column: ColumnSpec) -> str:
    return {"int64": "int", "float64": "float", "bool": "bool"}.get(column.dtype, "string")


def _tensor_kind(dtype: str) -> str:
    if dtype.startswith("float"):
        return "float"
    if dtype in ("bool", "string"):
        return dtype
    return "int"


def _dtype_bounds(dtype: str) -> tuple[float | None, float | None]:
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(np.dtype(dtype))
        return float(info.min), float(info.max)
    return None, None
