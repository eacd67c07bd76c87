"""scikit-learn (and XGBoost/LightGBM) models to ONNX, with skl2onnx.

The graph takes the inputs the version's signature declares, so clients send the same requests:
a tensor signature gives one tensor input of the same name; a tabular signature gives one
`[n, 1]` input per column, named like the column (string columns as strings, every numeric or
bool column as one float type, since the converted transformers concatenate them). Classifiers
are converted without ZipMap, so probabilities are an `n x c` tensor, and the class labels go
into the model metadata where the ONNX runtime finds them.

Double precision is tried first for float64 data and single precision for float32 data; the
other is the fallback, because some converters (LightGBM) only produce float graphs. A graph is
accepted only when onnxruntime can load it; whether it computes the same as the source is the
equivalence check's business, not this module's.

skl2onnx, onnx and onnxruntime are imported when a conversion starts, so Berth runs without
them; XGBoost and LightGBM converters (from onnxmltools) are registered when those packages are
installed.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from berth.errors import InvalidInput
from berth.registry.signature import Signature
from berth.runtimes.onnx import CLASSES_METADATA_KEY, LABELS_METADATA_KEY
from berth.runtimes.sklearn import argmax_families

PRECISIONS = ("double", "float")
_BOOSTER_PACKAGES = ("xgboost", "lightgbm")


class ConversionError(InvalidInput):
    """The model cannot be converted to ONNX (an estimator without a converter, a bad input)."""


@dataclass(frozen=True)
class Converted:
    """An ONNX graph converted from a model, and how it was made."""

    onnx_bytes: bytes
    precision: str
    """'double' or 'float': the type numeric inputs are fed as."""
    converter: str
    """The converter and its version, e.g. 'skl2onnx 1.20.0'."""
    classes: list[Any] | None


def to_onnx(model: Any, signature: Signature, *, float_only: bool = False) -> Converted:
    """Convert a fitted estimator or pipeline to an ONNX graph taking `signature`'s inputs.

    `float_only`: single precision only, as int8 quantization needs float graphs.
    """
    skl2onnx = require("skl2onnx", "the ONNX conversion")
    register_booster_converters()
    boosted = _check_convertible(model)
    failures: list[str] = []
    precisions = ("float",) if float_only else _precisions(signature)
    for precision in precisions:
        try:
            graph = _convert(skl2onnx, model, signature, precision, boosted)
            _check_loads(graph)
        except ConversionError:
            raise
        except Exception as exc:  # converters raise anything; reported below
            failures.append(f"{precision}: {_first_line(exc)}")
            continue
        classes = _classes(model)
        if classes is not None:
            _set_metadata(graph, CLASSES_METADATA_KEY, json.dumps(classes))
            if _labels_are_argmax(model):
                _set_metadata(graph, LABELS_METADATA_KEY, "argmax")
        converter = f"skl2onnx {skl2onnx.__version__}"
        return Converted(graph.SerializeToString(), precision, converter, classes)
    raise ConversionError(
        f"{type(model).__name__} could not be converted to ONNX ({'; '.join(failures)}); "
        "keep serving the source version"
    )


def require(package: str, purpose: str) -> ModuleType:
    """Import an optional package, or say how to install it."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        raise InvalidInput(
            f"{purpose} needs the '{package}' package, which is not installed; "
            "run: pip install 'berth[onnx]'"
        ) from exc


@functools.cache
def register_booster_converters() -> tuple[str, ...]:
    """Teach skl2onnx the XGBoost and LightGBM estimators that are installed (once)."""
    registered: list[str] = []
    for package in _BOOSTER_PACKAGES:
        try:
            importlib.import_module(package)
            importlib.import_module("onnxmltools")
        except ModuleNotFoundError:
            continue
        _register_booster(package)
        registered.append(package)
    return tuple(registered)


def _register_booster(package: str) -> None:
    skl2onnx = importlib.import_module("skl2onnx")
    shapes = importlib.import_module("skl2onnx.common.shape_calculator")
    module = importlib.import_module(package)
    if package == "xgboost":
        path, function, prefix = (
            "onnxmltools.convert.xgboost.operator_converters.XGBoost",
            "convert_xgboost",
            "XGBoost",
        )
    else:
        path, function, prefix = (
            "onnxmltools.convert.lightgbm.operator_converters.LightGbm",
            "convert_lightgbm",
            "LightGbm",
        )
    converter = getattr(importlib.import_module(path), function)
    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    names = (
        ("XGBClassifier", "XGBRegressor")
        if package == "xgboost"
        else ("LGBMClassifier", "LGBMRegressor")
    )
    for name in names:
        is_classifier = "Classifier" in name
        skl2onnx.update_registered_converter(
            getattr(module, name),
            f"{prefix}{name}",
            shapes.calculate_linear_classifier_output_shapes
            if is_classifier
            else shapes.calculate_linear_regressor_output_shapes,
            converter,
            options=classifier_options if is_classifier else None,
        )


def _check_convertible(model: Any) -> bool:
    """Refuse, naming it, an estimator anywhere in the model that skl2onnx has no converter for.

    True when the model holds an XGBoost or LightGBM estimator.
    """
    known = importlib.import_module("skl2onnx._supported_operators").sklearn_operator_name_map
    boosted = False
    for where, part in _parts(model):
        kind = type(part)
        package = kind.__module__.split(".")[0]
        boosted = boosted or package in _BOOSTER_PACKAGES
        if kind in known:
            continue
        name = f"{package}.{kind.__qualname__}"
        place = f" (at '{where}')" if where else ""
        if package in _BOOSTER_PACKAGES:
            raise ConversionError(
                f"converting {name}{place} to ONNX needs the 'onnxmltools' package, which is not "
                "installed; run: pip install onnxmltools"
            )
        raise ConversionError(
            f"{name}{place} has no ONNX converter in skl2onnx, so this model cannot be converted; "
            "keep serving the source version, or replace that step with one skl2onnx supports"
        )
    return boosted


def _parts(model: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every estimator in a model: itself, pipeline steps, column transformers, and so on."""
    yield where, model
    get_params = getattr(model, "get_params", None)
    if get_params is None:
        return
    for key, value in get_params(deep=False).items():
        yield from _nested(value, f"{where}.{key}" if where else key)


def _nested(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    if _is_estimator(value):
        yield from _parts(value, where)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if isinstance(item, tuple) and item and isinstance(item[0], str):
                # (name, estimator, ...) as in Pipeline.steps and ColumnTransformer.transformers
                for inner in item[1:]:
                    if _is_estimator(inner):
                        yield from _parts(inner, f"{where}.{item[0]}")
            elif _is_estimator(item):
                yield from _parts(item, f"{where}[{index}]")


def _is_estimator(value: Any) -> bool:
    return not isinstance(value, type) and callable(getattr(value, "fit", None))


def _precisions(signature: Signature) -> tuple[str, ...]:
    if signature.kind == "tensor" and signature.inputs[0].dtype in ("float32", "float16"):
        return ("float", "double")
    return PRECISIONS


def _convert(
    skl2onnx: ModuleType, model: Any, signature: Signature, precision: str, boosted: bool
) -> Any:
    is_classifier = importlib.import_module("sklearn.base").is_classifier(model)
    options = {id(model): {"zipmap": False}} if is_classifier else None
    # onnxmltools writes tree ensembles in version 3 of the ML operators and refuses newer ones.
    opset = {"": skl2onnx.get_latest_tested_opset_version(), "ai.onnx.ml": 3} if boosted else None
    return skl2onnx.convert_sklearn(
        model,
        # skl2onnx names the graph with a random UUID by default: one model would convert to
        # other bytes (another sha256) each time, and two exports of one version would differ.
        name=type(model).__name__,
        initial_types=input_types(signature, precision),
        options=options,
        target_opset=opset,
    )


def input_types(signature: Signature, precision: str) -> list[tuple[str, Any]]:
    """The skl2onnx input declarations for a signature, numeric inputs in `precision`."""
    types = importlib.import_module("skl2onnx.common.data_types")
    number = types.DoubleTensorType if precision == "double" else types.FloatTensorType
    if signature.kind == "tabular":
        return [
            (
                c.name,
                types.StringTensorType([None, 1]) if c.dtype == "string" else number([None, 1]),
            )
            for c in signature.columns
        ]
    if len(signature.inputs) != 1:
        names = ", ".join(signature.input_names)
        raise ConversionError(
            f"the signature has {len(signature.inputs)} tensor inputs ({names}); a scikit-learn "
            "model is converted with one input, a tensor or one column per table column"
        )
    spec = signature.inputs[0]
    shape = [None if d == -1 else d for d in spec.shape]
    kind = types.StringTensorType if spec.dtype == "string" else number
    return [(spec.name, kind(shape))]


def _check_loads(graph: Any) -> None:
    ort = require("onnxruntime", "the ONNX conversion")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ort.InferenceSession(
        graph.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _classes(model: Any) -> list[Any] | None:
    classes = getattr(model, "classes_", None)
    if classes is None or not callable(getattr(model, "predict_proba", None)):
        return None
    listed: list[Any] = np.asarray(classes).tolist()
    return listed


def _set_metadata(graph: Any, key: str, value: str) -> None:
    entry = graph.metadata_props.add()
    entry.key, entry.value = key, value


def _labels_are_argmax(model: Any) -> bool:
    """Whether scikit-learn labels a row with the first class of highest probability.

    The list of such classifiers is the sklearn runtime's, which serves them by that rule.
    """
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return isinstance(final, argmax_families())


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
