"""Run an exported Berth model with nothing but onnxruntime and numpy.

`berth export REF --format onnx --out DIR` copies this file as `DIR/run.py`, beside
`model.onnx` and `signature.json`:

    python run.py rows.json        # {"instances": [...]}, {"features": {...}} or [row, ...]
    python run.py rows.csv         # tabular models: a header row with the signature's columns

    from run import Model
    Model("model.onnx").predict([{"tenure_months": 3, "plan": "basic", ...}])

It prints (and `predict` returns) what Berth's v1 batch-predict answers under `predictions`,
plus `probabilities` and `classes` when the model has them. Rows are checked against the
signature as Berth checks requests (columns, types, nulls, ranges, shapes), then cast to the
graph's input types; the outputs are read as Berth's ONNX runtime reads them: class labels from
the graph's metadata, and, where the metadata says so, the label of the highest probability.

It imports only the standard library, numpy and onnxruntime, so it runs on any machine with
`pip install -r requirements.txt`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

Array = np.ndarray[Any, Any]

CLASSES_KEY = "classes"
"""Graph metadata: the class labels as a JSON list, in probability column order."""
LABELS_KEY = "labels"
"""Graph metadata: `argmax` when a row's label is the first class of highest probability."""

ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


class InputError(ValueError):
    """Rows the model cannot take; the message says what to send instead."""


class Model:
    """The exported graph and its signature, ready to predict rows."""

    def __init__(
        self, path: str | Path = "model.onnx", signature: str | Path | None = None
    ) -> None:
        path = Path(path)
        signature_path = Path(signature) if signature else path.with_name("signature.json")
        self.signature: dict[str, Any] = json.loads(signature_path.read_text())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs: list[Any] = list(self.session.get_inputs())
        self.outputs: list[Any] = list(self.session.get_outputs())
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.classes = _metadata_classes(metadata.get(CLASSES_KEY))
        self.argmax_labels = metadata.get(LABELS_KEY) == "argmax"

    @property
    def tabular(self) -> bool:
        return "columns" in self.signature

    def predict(self, rows: Sequence[Any]) -> dict[str, Any]:
        """Predictions for v1 rows: lists (tensor models), objects or lists (tabular models)."""
        if not isinstance(rows, list | tuple) or not rows:
            raise InputError("expected a non-empty list of rows, e.g. [[5.1, 3.5, 1.4, 0.2]]")
        feed = self._feed(rows)
        try:
            results = self.session.run(None, feed)
        except Exception as exc:  # onnxruntime raises its own types (InvalidArgument, Fail)
            raise InputError(f"the ONNX model rejected the input: {exc}") from exc
        return self._document(results)

    def predict_file(self, path: str | Path) -> dict[str, Any]:
        """Predictions for a JSON file of rows, or for tabular models a CSV file."""
        return self.predict(self.read_rows(Path(path)))

    def read_rows(self, path: Path) -> list[Any]:
        if path.suffix.lower() == ".csv":
            return self._csv_rows(path)
        document = json.loads(path.read_text())
        if isinstance(document, dict) and "instances" in document:
            rows = document["instances"]
        elif isinstance(document, dict) and "features" in document:
            rows = [document["features"]]
        else:
            rows = document
        if not isinstance(rows, list):
            raise InputError(
                f'{path}: expected {{"instances": [row, ...]}}, {{"features": row}} or a list '
                "of rows"
            )
        return rows

    # input -------------------------------------------------------------------------------

    def _feed(self, rows: Sequence[Any]) -> dict[str, Array]:
        if self.tabular:
            return self._feed_columns(_table(self.signature["columns"], rows))
        specs = self.signature["inputs"]
        if len(specs) == 1:
            arrays = {specs[0]["name"]: _tensor(specs[0], list(rows), "instances")}
        else:
            arrays = _named_tensors(specs, rows)
        return self._feed_named(arrays)

    def _feed_columns(self, columns: dict[str, Array]) -> dict[str, Array]:
        if all(n.name in columns and _is_column_shape(n.shape) for n in self.inputs):
            return {
                node.name: _cast(_as_column(columns[node.name], node), node) for node in self.inputs
            }
        if len(self.inputs) != 1:
            names = ", ".join(node.name for node in self.inputs)
            raise InputError(f"the graph takes inputs {names}, which are not the table's columns")
        table = np.empty((len(next(iter(columns.values()))), len(columns)), dtype=object)
        for index, values in enumerate(columns.values()):
            table[:, index] = values
        return {self.inputs[0].name: _cast(table, self.inputs[0])}

    def _feed_named(self, arrays: dict[str, Array]) -> dict[str, Array]:
        if len(self.inputs) == 1 and len(arrays) == 1:
            return {self.inputs[0].name: _cast(next(iter(arrays.values())), self.inputs[0])}
        missing = [node.name for node in self.inputs if node.name not in arrays]
        if missing:
            raise InputError(f"the graph needs inputs {missing} that the signature does not name")
        return {node.name: _cast(arrays[node.name], node) for node in self.inputs}

    def _csv_rows(self, path: Path) -> list[Any]:
        if not self.tabular:
            raise InputError(
                f"{path}: CSV input is for tabular models; give a JSON file of rows "
                '({"instances": [[...], ...]})'
            )
        dtypes = {column["name"]: column["dtype"] for column in self.signature["columns"]}
        with path.open(newline="") as handle:
            return [
                {name: _csv_value(dtypes.get(name), text) for name, text in record.items()}
                for record in csv.DictReader(handle)
            ]

    # output ------------------------------------------------------------------------------

    def _document(self, results: list[Any]) -> dict[str, Any]:
        predictions = np.asarray(results[0])
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        probabilities: Array | None = None
        classes: list[Any] | None = None
        if len(results) >= 2:
            second = self.outputs[1]
            if second.type.startswith("seq(map("):
                probabilities, classes = self._from_zipmap(results[1])
            elif "probab" in second.name.lower():
                probabilities = np.asarray(results[1])
                classes = self._known_classes(probabilities)
                if self.argmax_labels and classes is not None and len(probabilities):
                    labels = np.asarray(classes, dtype=predictions.dtype)
                    predictions = labels[probabilities.argmax(axis=1)]
        document: dict[str, Any] = {"predictions": predictions.tolist()}
        if probabilities is not None:
            document["probabilities"] = probabilities.tolist()
        if classes is not None:
            document["classes"] = [_plain(c) for c in classes]
        return document

    def _from_zipmap(self, rows: list[dict[Any, float]]) -> tuple[Array | None, list[Any] | None]:
        classes = list(rows[0].keys()) if rows else self.classes
        if classes is None:
            return None, None
        probabilities = np.array(
            [[row[c] for c in classes] for row in rows], dtype=np.float64
        ).reshape(len(rows), len(classes))
        return probabilities, classes

    def _known_classes(self, probabilities: Array) -> list[Any] | None:
        classes = self.classes
        if classes is None or probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
            return None
        return classes


# tables ------------------------------------------------------------------------------------


def _table(columns: list[dict[str, Any]], rows: Sequence[Any]) -> dict[str, Array]:
    """Rows (objects of column values, or lists in column order) as one typed array per column."""
    names = [column["name"] for column in columns]
    values: dict[str, list[Any]] = {name: [] for name in names}
    for index, row in enumerate(rows):
        where = f"instances[{index}]"
        if isinstance(row, Mapping):
            unknown = [key for key in row if key not in values]
            missing = [name for name in names if name not in row]
            if unknown or missing:
                raise InputError(
                    f"{where}: expected columns {names}; unknown: {unknown}, missing: {missing}"
                )
            cells = [row[name] for name in names]
        elif isinstance(row, list | tuple) and len(row) == len(names):
            cells = list(row)
        else:
            raise InputError(
                f"{where}: expected an object of column values or {len(names)} values in "
                f"column order {names}"
            )
        for name, cell in zip(names, cells, strict=True):
            values[name].append(cell)
    return {column["name"]: _column(column, values[column["name"]]) for column in columns}


def _column(spec: Mapping[str, Any], values: list[Any]) -> Array:
    name, dtype = spec["name"], spec["dtype"]
    nulls = [value is None or (isinstance(value, float) and math.isnan(value)) for value in values]
    if any(nulls) and not spec.get("nullable", False):
        row = nulls.index(True)
        raise InputError(f"{name}: row {row} is null or NaN, but the column is not nullable")
    for row, value in enumerate(values):
        if not nulls[row] and not _fits(dtype, value):
            raise InputError(f"{name}: row {row} has {value!r}, expected {_kind(dtype)}")
    present = [value for value, null in zip(values, nulls, strict=True) if not null]
    if dtype in ("int64", "float64"):
        _check_range(spec, present)
    if dtype == "string":
        return np.array(values, dtype=object)
    if dtype == "bool" and not any(nulls):
        return np.array(values, dtype=bool)
    if dtype == "int64" and not any(nulls):
        return np.array([int(value) for value in values], dtype=np.int64)
    return np.array(
        [math.nan if null else value for value, null in zip(values, nulls, strict=True)],
        dtype=np.float64,
    )


def _fits(dtype: str, value: Any) -> bool:
    if dtype == "string":
        return isinstance(value, str)
    if dtype == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return dtype != "int64" or -(2**63) <= value < 2**63
    return math.isfinite(value) and (dtype != "int64" or value.is_integer())


def _check_range(spec: Mapping[str, Any], values: list[Any]) -> None:
    low, high = spec.get("minimum"), spec.get("maximum")
    for value in values:
        if (low is not None and value < low) or (high is not None and value > high):
            raise InputError(
                f"{spec['name']}: {value!r} is outside the allowed range "
                f"[{'any' if low is None else low}, {'any' if high is None else high}]"
            )


def _csv_value(dtype: str | None, text: str | None) -> Any:
    """A CSV cell as the JSON value a client would send: empty is null, numbers are numbers."""
    if text is None or text == "":
        return None
    if dtype == "int64":
        try:
            return int(text)
        except ValueError:
            return _number(text)
    if dtype == "float64":
        return _number(text)
    if dtype == "bool" and text.strip().lower() in ("true", "false", "1", "0"):
        return text.strip().lower() in ("true", "1")
    return text


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # reported by the column check, with its row


# tensors -----------------------------------------------------------------------------------


def _named_tensors(specs: list[dict[str, Any]], rows: Sequence[Any]) -> dict[str, Array]:
    names = [spec["name"] for spec in specs]
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping) or sorted(row) != sorted(names):
            raise InputError(f"instances[{index}]: expected an object with inputs {names}")
    return {
        spec["name"]: _tensor(spec, [row[spec["name"]] for row in rows], spec["name"])
        for spec in specs
    }


def _tensor(spec: Mapping[str, Any], values: list[Any], field: str) -> Array:
    """Rows of one input, checked against its dtype and shape and cast to its dtype."""
    dtype, shape = spec["dtype"], spec["shape"]
    try:
        objects = np.array(values, dtype=object)
    except ValueError as exc:
        raise InputError(f"{field}: rows have different lengths or nesting") from exc
    if objects.ndim != len(shape) or any(
        want not in (-1, got) for want, got in zip(shape, objects.shape, strict=True)
    ):
        raise InputError(
            f"{field}: expected data of shape {shape} (-1: any size), got {list(objects.shape)}"
        )
    flat = objects.reshape(-1)
    bad = next((index for index, value in enumerate(flat) if not _fits_tensor(dtype, value)), None)
    if bad is not None:
        raise InputError(f"{field}: expected {_kind(dtype)}, got {flat[bad]!r}")
    if dtype == "string":
        return objects
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        if any(not info.min <= value <= info.max for value in flat):
            raise InputError(f"{field}: values outside the range of {dtype}")
    with np.errstate(over="ignore"):
        cast = objects.astype(target)
    if target.kind == "f" and not np.all(np.isfinite(cast)):
        raise InputError(f"{field}: a value is too large for {dtype}")
    return cast


def _fits_tensor(dtype: str, value: Any) -> bool:
    """Whether a JSON value can be an element of a tensor of `dtype` (ranges checked after)."""
    if dtype in ("string", "bool"):
        return _fits(dtype, value)
    if np.dtype(dtype).kind in "iu":
        return _fits("float64", value) and (isinstance(value, int) or value.is_integer())
    return _fits("float64", value)


# casting to the graph ----------------------------------------------------------------------


def _is_column_shape(shape: list[Any]) -> bool:
    if len(shape) == 1:
        return True
    return len(shape) == 2 and (shape[1] == 1 or not isinstance(shape[1], int))


def _as_column(values: Array, node: Any) -> Array:
    return values.reshape(-1, 1) if len(node.shape) == 2 else values


def _cast(array: Array, node: Any) -> Array:
    dtype = ORT_DTYPES.get(node.type)
    if dtype is None:
        return array
    try:
        if dtype == "string":
            return np.asarray(array).astype(str).astype(object)
        return np.ascontiguousarray(array, dtype=np.dtype(dtype))
    except (ValueError, TypeError) as exc:
        raise InputError(f"input '{node.name}' cannot be converted to {dtype}: {exc}") from exc


def _metadata_classes(raw: str | None) -> list[Any] | None:
    if raw is None:
        return None
    try:
        classes = json.loads(raw)
    except ValueError:
        return None
    return classes if isinstance(classes, list) else None


def _kind(dtype: str) -> str:
    if dtype == "string":
        return "a string"
    if dtype == "bool":
        return "true or false"
    return "an integer" if np.dtype(dtype).kind in "iu" else "a number"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict with the exported model.")
    parser.add_argument("input", help="JSON file of rows, or a CSV file for tabular models")
    parser.add_argument(
        "--model",
        default=str(Path(__file__).with_name("model.onnx")),
        help="the ONNX model (default: model.onnx beside this script)",
    )
    args = parser.parse_args(argv)
    try:
        document = Model(args.model).predict_file(args.input)
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
