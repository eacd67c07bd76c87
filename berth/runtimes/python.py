"""A user's own Python class with `load` and `predict` methods.

The artifact is a .py file, or a directory holding model.py (or exactly one .py file) next to
the files the class loads. Berth instantiates the class with no arguments and calls `load()`,
or `load(artifact_dir)` when the method takes a parameter.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from berth.errors import InvalidInput, ModelLoadError
from berth.registry.signature import Signature
from berth.runtimes import python_entry
from berth.runtimes.base import ModelInput, Prediction, row_count
from berth.runtimes.user_code import forget, import_file


class PythonRuntime:
    flavor: str = "python"

    def __init__(self, model: Any, class_name: str) -> None:
        self.model = model
        self.class_name = class_name

    def predict(self, inputs: ModelInput) -> Prediction:
        output = self._call("predict", inputs)
        probabilities: Any = None
        if isinstance(output, dict):
            if "predictions" not in output:
                raise ModelLoadError(
                    f"{self.class_name}.predict returned a dict without 'predictions'; return "
                    "a list/array, or {'predictions': ..., 'probabilities': ...}"
                )
            probabilities = output.get("probabilities")
            output = output["predictions"]
        if probabilities is None and callable(getattr(self.model, "predict_proba", None)):
            probabilities = self._call("predict_proba", inputs)
        rows = row_count(inputs)
        predictions = self._as_rows(output, rows, "predictions")
        if probabilities is None:
            return Prediction(predictions=predictions)
        proba = self._as_rows(probabilities, rows, "probabilities")
        return Prediction(predictions, proba, self._classes(proba))

    def declared_signature(self) -> Signature | None:
        return None

    def _call(self, method: str, inputs: ModelInput) -> Any:
        try:
            return getattr(self.model, method)(inputs)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{self.class_name}.{method} rejected the input: {exc}") from exc

    def _as_rows(self, values: Any, rows: int, what: str) -> np.ndarray[Any, Any]:
        try:
            array = np.asarray(values)
        except ValueError as exc:
            raise ModelLoadError(
                f"{self.class_name} returned {what} that do not form an array ({exc}); "
                "return one value (or one equal-length list) per input row"
            ) from exc
        if array.ndim == 0 or len(array) != rows:
            count = "a single value" if array.ndim == 0 else f"{len(array)} {what}"
            raise ModelLoadError(
                f"{self.class_name} returned {count} for {rows} input rows; "
                f"return one entry of {what} per input row"
            )
        return array

    def _classes(self, probabilities: np.ndarray[Any, Any]) -> list[Any] | None:
        classes = getattr(self.model, "classes", None)
        if classes is None or callable(classes):
            return None
        labels = np.asarray(classes).tolist()
        if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
            raise ModelLoadError(
                f"{self.class_name}.classes has {len(labels)} labels but the probabilities have "
                f"shape {list(probabilities.shape)}; give one label per probability column"
            )
        return list(labels)


def load(path: Path) -> PythonRuntime:
    source = _source_file(path)
    module = import_file(source)
    try:
        model_class = _model_class(module, source)
        model = _instantiate(model_class, source.parent)
    except ModelLoadError:
        forget(module)
        raise
    return PythonRuntime(model, model_class.__name__)


def _source_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    found = python_entry(path)
    if found is None:
        raise ModelLoadError(
            f"directory {path} has no model.py and not exactly one .py file; "
            "name the file that defines your model class model.py"
        )
    return found


def _model_class(module: ModuleType, source: Path) -> type[Any]:
    candidates = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
        and callable(getattr(cls, "load", None))
        and callable(getattr(cls, "predict", None))
    ]
    if len(candidates) != 1:
        found = ", ".join(cls.__name__ for cls in candidates) or "none"
        raise ModelLoadError(
            f"{source} must define exactly one class with load() and predict() methods "
            f"(found: {found}); keep one model class in the file"
        )
    return candidates[0]


def _instantiate(model_class: type[Any], artifact_dir: Path) -> Any:
    name = model_class.__name__
    try:
        model = model_class()
    except Exception as exc:
        raise ModelLoadError(
            f"{name}() failed ({type(exc).__name__}: {exc}); the class must be constructible "
            "with no arguments, do setup work in load()"
        ) from exc
    takes_path = _load_takes_path(model, name)
    try:
        if takes_path:
            model.load(artifact_dir)
        else:
            model.load()
    except Exception as exc:
        raise ModelLoadError(f"{name}.load() failed ({type(exc).__name__}: {exc})") from exc
    return model


def _load_takes_path(model: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(model.load).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required = [p for p in positional if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
    if len(required) > 1:
        raise ModelLoadError(
            f"{name}.load takes {len(required)} required parameters; it must take none, "
            "or one: the artifact directory"
        )
    return bool(positional)
