"""ONNX graphs run with onnxruntime on CPU, including skl2onnx-converted scikit-learn models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from berth.errors import InvalidInput, ModelLoadError
from berth.frames import is_frame
from berth.registry.signature import Signature, TensorSpec
from berth.runtimes.base import ModelInput, Prediction

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

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

CLASSES_METADATA_KEY = "classes"
"""Model metadata key holding the class labels as a JSON list, in probability column order."""

LABELS_METADATA_KEY = "labels"
"""Model metadata key; the value `argmax` says a row's label is the first class of highest
probability, as scikit-learn decides for most classifiers. Converted graphs decide ties their
own way (a tree ensemble with as many trees for each of two classes), so `berth models optimize`
sets it where scikit-learn's rule applies, and the label follows the probabilities here."""

# Errors onnxruntime raises when the fed data does not fit the graph (ValueError: missing inputs).
_INPUT_ERRORS = (InvalidArgument, Fail, RuntimeException, ValueError)


class OnnxRuntime:
    flavor: str = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs: list[Any] = list(session.get_inputs())
        self.outputs: list[Any] = list(session.get_outputs())
        self.metadata_classes = _metadata_classes(session)
        metadata = session.get_modelmeta().custom_metadata_map
        self.argmax_labels = metadata.get(LABELS_METADATA_KEY) == "argmax"
        # What a call needs from the graph, read once: every attribute of a node is a call
        # into onnxruntime's C++, and a small model's prediction is only a few of those.
        self._names = [node.name for node in self.inputs]
        self._dtypes = [ORT_DTYPES.get(node.type) for node in self.inputs]
        self._output_names = [node.name for node in self.outputs]
        self._second = _second_output(self.outputs)
        # The session's own C++ call, past the Python wrapper's per-call checks of the feed's
        # names (the feed is built from the graph's inputs, so they hold).
        self._run = getattr(session, "_sess", session).run

    def predict(self, inputs: ModelInput) -> Prediction:
        feed = self._feed(inputs)
        try:
            results = self._run(self._output_names, feed, None)
        except _INPUT_ERRORS as exc:
            raise InvalidInput(f"the ONNX model rejected the input: {exc}") from exc
        return self._prediction(results)

    def declared_signature(self) -> Signature | None:
        specs = [_tensor_spec(node) for node in self.inputs]
        inputs = tuple(spec for spec in specs if spec is not None)
        if not inputs or len(inputs) != len(specs):
            return None
        outputs = tuple(spec for spec in map(_tensor_spec, self.outputs) if spec is not None)
        return Signature(kind="tensor", inputs=inputs, outputs=outputs)

    def _feed(self, inputs: ModelInput) -> dict[str, Any]:
        names = self._names
        if isinstance(inputs, np.ndarray) and len(names) == 1:
            return {names[0]: _cast(inputs, self.inputs[0], self._dtypes[0])}
        if isinstance(inputs, dict):
            return self._feed_named(inputs)
        if is_frame(inputs) and self._takes_columns(inputs):
            return {node.name: _column(inputs, node) for node in self.inputs}
        if len(self.inputs) != 1:
            raise InvalidInput(
                f"the ONNX model has {len(names)} inputs ({', '.join(names)}); "
                "send a value for each input by name"
            )
        array = inputs.to_numpy() if is_frame(inputs) else inputs
        return {names[0]: _cast(array, self.inputs[0], self._dtypes[0])}

    def _feed_named(self, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
        names = self._names
        missing = [n for n in names if n not in inputs]
        unknown = [n for n in inputs if n not in names]
        if missing or unknown:
            raise InvalidInput(
                f"the ONNX model takes inputs {', '.join(names)}; "
                f"missing: {', '.join(missing) or 'none'}, unknown: {', '.join(unknown) or 'none'}"
            )
        return {
            node.name: _cast(inputs[node.name], node, dtype)
            for node, dtype in zip(self.inputs, self._dtypes, strict=True)
        }

    def _takes_columns(self, frame: pd.DataFrame) -> bool:
        """True when the graph has one input per column (skl2onnx with named column inputs)."""
        columns = {str(c) for c in frame.columns}
        return all(node.name in columns and _is_column_shape(node.shape) for node in self.inputs)

    def _prediction(self, results: list[Any]) -> Prediction:
        predictions = np.asarray(results[0])
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if len(results) < 2:
            return Prediction(predictions=predictions)
        if self._second == "zipmap":
            probabilities, classes = self._from_zipmap(results[1])
            return Prediction(predictions, probabilities, classes)
        if self._second == "probabilities":
            probabilities = np.asarray(results[1])
            classes = self._known_classes(probabilities)
            if self.argmax_labels and classes is not None and len(probabilities):
                labels = np.asarray(classes, dtype=predictions.dtype)
                predictions = labels[probabilities.argmax(axis=1)]
            return Prediction(predictions, probabilities, classes)
        return Prediction(predictions=predictions)

    def _from_zipmap(
        self, rows: list[dict[Any, float]]
    ) -> tuple[np.ndarray[Any, Any] | None, list[Any] | None]:
        classes = list(rows[0].keys()) if rows else self.metadata_classes
        if classes is None:
            return None, None
        probabilities = np.array(
            [[row[c] for c in classes] for row in rows], dtype=np.float64
        ).reshape(len(rows), len(classes))
        return probabilities, classes

    def _known_classes(self, probabilities: np.ndarray[Any, Any]) -> list[Any] | None:
        classes = self.metadata_classes
        if classes is None or probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
            return None
        return classes


def load(path: Path) -> OnnxRuntime:
    options = ort.SessionOptions()
    # Warnings about graph optimisations are noise to a model server; errors still log.
    options.log_severity_level = 3
    # One thread per call, no spinning: parallelism comes from worker processes and concurrent
    # requests. onnxruntime's default pool (a thread per core, spinning after each call) made
    # two workers steal each other's cores: a random forest served 1,800 req/s instead of 3,000.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime {ort.__version__} could not load {path}: {exc}; check that the file is "
            "a complete .onnx model exported with an opset and IR version this onnxruntime supports"
        ) from exc
    return OnnxRuntime(session)


def _metadata_classes(session: Any) -> list[Any] | None:
    raw = session.get_modelmeta().custom_metadata_map.get(CLASSES_METADATA_KEY)
    if raw is None:
        return None
    try:
        classes = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return classes if isinstance(classes, list) else None


def _tensor_spec(node: Any) -> TensorSpec | None:
    dtype = ORT_DTYPES.get(node.type)
    shape = node.shape
    if dtype is None or not shape:
        return None
    # The first axis is the batch; symbolic or unknown sizes accept any size.
    dims = [-1] + [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:]]
    return TensorSpec(name=node.name, dtype=dtype, shape=tuple(dims))


def _is_column_shape(shape: list[Any]) -> bool:
    if len(shape) == 1:
        return True
    return len(shape) == 2 and (shape[1] == 1 or not isinstance(shape[1], int))


def _column(frame: pd.DataFrame, node: Any) -> np.ndarray[Any, Any]:
    values = frame[node.name].to_numpy()
    if len(node.shape) == 2:
        values = values.reshape(-1, 1)
    return _cast(values, node, ORT_DTYPES.get(node.type))


def _second_output(outputs: list[Any]) -> str | None:
    """What a graph's second output holds: `zipmap` (a map per row, class to probability),
    `probabilities` (a table, a column per class), or None (anything else, or no second)."""
    if len(outputs) < 2:
        return None
    if outputs[1].type.startswith("seq(map("):
        return "zipmap"
    return "probabilities" if "probab" in outputs[1].name.lower() else None


def _cast(array: np.ndarray[Any, Any], node: Any, dtype: str | None) -> np.ndarray[Any, Any]:
    """`array` as the input `node` takes it (`dtype`: its numpy dtype name, from ORT_DTYPES)."""
    if dtype is None:
        return array
    try:
        if dtype == "string":
            return np.asarray(array).astype(str).astype(object)
        return np.ascontiguousarray(array, dtype=np.dtype(dtype))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"input '{node.name}' cannot be converted to {dtype} as the ONNX model requires: {exc}"
        ) from exc
