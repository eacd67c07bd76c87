from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from berth.errors import InvalidInput, ModelLoadError
from berth.registry.signature import Signature, TensorSpec
from berth.runtimes import load_runtime

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
skl2onnx = pytest.importorskip("skl2onnx")
data_types = pytest.importorskip("skl2onnx.common.data_types")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 3)).astype(np.float32)
LABELS = np.where(X[:, 0] - X[:, 2] > 0, "yes", "no")


def _save(model: Any, path: Path, metadata: dict[str, str] | None = None) -> Path:
    if metadata:
        onnx.helper.set_model_props(model, metadata)
    path.write_bytes(model.SerializeToString())
    return path


def _convert(model: Any, zipmap: bool) -> Any:
    options = None if zipmap else {id(model): {"zipmap": False}}
    float_input = data_types.FloatTensorType([None, 3])
    return skl2onnx.convert_sklearn(model, initial_types=[("input", float_input)], options=options)


@pytest.fixture(scope="module")
def classifier() -> LogisticRegression:
    return LogisticRegression().fit(X, LABELS)


def test_classifier_without_zipmap(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = _save(_convert(classifier, zipmap=False), tmp_path / "model.onnx")

    result = load_runtime("onnx", path).predict(X[:8])

    assert_array_equal(result.predictions, classifier.predict(X[:8]))
    assert result.probabilities is not None
    assert_allclose(result.probabilities, classifier.predict_proba(X[:8]), atol=1e-5)
    assert result.classes is None


def test_classifier_classes_from_metadata(tmp_path: Path, classifier: LogisticRegression) -> None:
    metadata = {"classes": json.dumps(["no", "yes"])}
    path = _save(_convert(classifier, zipmap=False), tmp_path / "model.onnx", metadata)

    result = load_runtime("onnx", path).predict(X[:3])

    assert result.classes == ["no", "yes"]


def test_classifier_with_zipmap(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = _save(_convert(classifier, zipmap=True), tmp_path / "model.onnx")

    result = load_runtime("onnx", path).predict(X[:8].astype(np.float64))

    assert_array_equal(result.predictions, classifier.predict(X[:8]))
    assert result.classes == ["no", "yes"]
    assert result.probabilities is not None
    assert_allclose(result.probabilities, classifier.predict_proba(X[:8]), atol=1e-5)


def test_regressor_output_is_flat(tmp_path: Path) -> None:
    model = LinearRegression().fit(X, X @ np.array([1.0, -2.0, 0.5], dtype=np.float32))
    path = _save(skl2onnx.to_onnx(model, X[:1]), tmp_path / "model.onnx")

    result = load_runtime("onnx", path).predict(X[:5])

    assert result.predictions.shape == (5,)
    assert_allclose(result.predictions, model.predict(X[:5]), atol=1e-5)
    assert result.probabilities is None


def test_frame_fed_to_named_column_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, size=60).astype(np.float32),
            "city": rng.choice(["paris", "oslo", "lima"], size=60),
        }
    )
    target = np.where((frame["age"] > 45) | (frame["city"] == "oslo"), 1, 0)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]
    )
    pipeline = Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(frame, target)
    inputs = [
        ("age", data_types.FloatTensorType([None, 1])),
        ("city", data_types.StringTensorType([None, 1])),
    ]
    path = _save(skl2onnx.convert_sklearn(pipeline, initial_types=inputs), tmp_path / "p.onnx")
    request = pd.DataFrame({"age": [20.0, 70.0, 40.0], "city": ["oslo", "paris", "tokyo"]})

    result = load_runtime("onnx", path).predict(request)

    assert_array_equal(result.predictions, pipeline.predict(request))
    assert result.classes == [0, 1]
    assert result.probabilities is not None
    assert_allclose(result.probabilities, pipeline.predict_proba(request), atol=1e-5)


def _add_graph(path: Path) -> Path:
    helper, tensor = onnx.helper, onnx.TensorProto
    a = helper.make_tensor_value_info("a", tensor.FLOAT, ["batch", 3])
    b = helper.make_tensor_value_info("b", tensor.FLOAT, ["batch", 3])
    c = helper.make_tensor_value_info("c", tensor.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "add", [a, b], [c])
    # onnx writes a newer IR version than onnxruntime reads by default; pin a supported one.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return _save(model, path)


def test_hand_built_graph_signature_and_named_inputs(tmp_path: Path) -> None:
    runtime = load_runtime("onnx", _add_graph(tmp_path / "add.onnx"))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)

    result = runtime.predict({"a": a, "b": np.ones((2, 3))})

    assert runtime.declared_signature() == Signature(
        kind="tensor",
        inputs=(TensorSpec("a", "float32", (-1, 3)), TensorSpec("b", "float32", (-1, 3))),
        outputs=(TensorSpec("c", "float32", (-1, 3)),),
    )
    assert_allclose(result.predictions, a + 1)


def test_skl2onnx_signature(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = _save(_convert(classifier, zipmap=False), tmp_path / "model.onnx")

    signature = load_runtime("onnx", path).declared_signature()

    assert signature is not None
    assert signature.inputs == (TensorSpec("input", "float32", (-1, 3)),)
    assert [o.to_dict() for o in signature.outputs] == [
        {"name": "label", "dtype": "string", "shape": [-1]},
        {"name": "probabilities", "dtype": "float32", "shape": [-1, 2]},
    ]


def test_array_for_multi_input_graph_is_invalid(tmp_path: Path) -> None:
    runtime = load_runtime("onnx", _add_graph(tmp_path / "add.onnx"))

    with pytest.raises(InvalidInput, match="by name"):
        runtime.predict(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(InvalidInput, match="missing: b"):
        runtime.predict({"a": np.ones((2, 3), dtype=np.float32)})


def test_wrong_shape_is_invalid_input(tmp_path: Path, classifier: LogisticRegression) -> None:
    runtime = load_runtime("onnx", _save(_convert(classifier, False), tmp_path / "m.onnx"))

    with pytest.raises(InvalidInput, match="invalid dimensions"):
        runtime.predict(np.ones((2, 4), dtype=np.float32))


def test_uncastable_input_is_invalid_input(tmp_path: Path, classifier: LogisticRegression) -> None:
    runtime = load_runtime("onnx", _save(_convert(classifier, False), tmp_path / "m.onnx"))

    with pytest.raises(InvalidInput, match="float32"):
        runtime.predict(np.array([["a", "b", "c"]]))


def test_garbage_file_is_load_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"definitely not protobuf")

    with pytest.raises(ModelLoadError, match="could not load"):
        load_runtime("onnx", tmp_path / "model.onnx")


def test_missing_onnxruntime_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _add_graph(tmp_path / "add.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.delitem(sys.modules, "berth.runtimes.onnx", raising=False)

    with pytest.raises(ModelLoadError, match=r"pip install 'berth\[onnx\]'"):
        load_runtime("onnx", path)
