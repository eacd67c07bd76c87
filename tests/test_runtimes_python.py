from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from berth.errors import InvalidInput, ModelLoadError
from berth.runtimes import load_runtime

NO_ARG_MODEL = """
import numpy as np

class Doubler:
    def load(self):
        self.factor = 2.0

    def predict(self, inputs):
        if np.asarray(inputs).ndim != 2:
            raise ValueError("expected a 2-D batch")
        if np.isnan(np.asarray(inputs, dtype=float)).any():
            raise RuntimeError("bug in user code")
        return (np.asarray(inputs).sum(axis=1) * self.factor).tolist()
"""

PATH_MODEL = """
import json

from helpers import Helper, threshold


class Thresholder:
    classes = ["low", "high"]

    def load(self, artifact_dir):
        self.cut = json.loads((artifact_dir / "params.json").read_text())["cut"]

    def predict(self, inputs):
        score = inputs["x"].to_numpy()
        high = (score > self.cut).astype(float)
        return {
            "predictions": [threshold(s, self.cut) for s in score],
            "probabilities": [[1 - h, h] for h in high],
        }
"""

HELPERS = """
class Helper:
    def load(self):
        pass

    def predict(self, inputs):
        return inputs


def threshold(score, cut):
    return "high" if score > cut else "low"
"""


def _write(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def test_class_with_no_arg_load(tmp_path: Path) -> None:
    path = _write(tmp_path, "doubler.py", NO_ARG_MODEL)
    inputs = np.arange(6, dtype=np.float64).reshape(3, 2)

    runtime = load_runtime("python", path)
    result = runtime.predict(inputs)

    assert runtime.flavor == "python"
    assert runtime.declared_signature() is None
    assert_allclose(result.predictions, [2.0, 10.0, 18.0])
    assert result.probabilities is None


def test_directory_with_load_path_and_helper_module(tmp_path: Path) -> None:
    _write(tmp_path, "model.py", PATH_MODEL)
    _write(tmp_path, "helpers.py", HELPERS)  # has load/predict but is not model.py's own class
    (tmp_path / "params.json").write_text('{"cut": 0.5}')
    path_before = list(sys.path)

    result = load_runtime("python", tmp_path).predict(pd.DataFrame({"x": [0.1, 0.9, 0.7]}))

    assert sys.path == path_before
    assert_array_equal(result.predictions, ["low", "high", "high"])
    assert result.probabilities is not None
    assert_allclose(result.probabilities, [[1, 0], [0, 1], [0, 1]])
    assert result.classes == ["low", "high"]


def test_predict_proba_method_is_used(tmp_path: Path) -> None:
    source = """
    class Coin:
        classes = [0, 1]

        def load(self):
            pass

        def predict(self, inputs):
            return [1] * len(inputs)

        def predict_proba(self, inputs):
            return [[0.25, 0.75]] * len(inputs)
    """
    runtime = load_runtime("python", _write(tmp_path, "coin.py", source))

    result = runtime.predict(np.zeros((2, 1)))

    assert_allclose(result.probabilities, [[0.25, 0.75], [0.25, 0.75]])  # type: ignore[arg-type]
    assert result.classes == [0, 1]


def test_same_file_name_in_two_directories_loads_two_models(tmp_path: Path) -> None:
    source = "class M:\n    def load(self):\n        pass\n    def predict(self, x):\n"
    first = _write(tmp_path / "a", "model.py", source + "        return [1] * len(x)\n")
    second = _write(tmp_path / "b", "model.py", source + "        return [2] * len(x)\n")

    one, two = load_runtime("python", first), load_runtime("python", second)

    assert_array_equal(one.predict(np.zeros((1, 1))).predictions, [1])
    assert_array_equal(two.predict(np.zeros((1, 1))).predictions, [2])


def test_value_error_from_user_code_is_invalid_input(tmp_path: Path) -> None:
    runtime = load_runtime("python", _write(tmp_path, "doubler.py", NO_ARG_MODEL))

    with pytest.raises(InvalidInput, match="expected a 2-D batch"):
        runtime.predict(np.arange(3.0))


def test_other_errors_from_user_code_propagate(tmp_path: Path) -> None:
    runtime = load_runtime("python", _write(tmp_path, "doubler.py", NO_ARG_MODEL))

    with pytest.raises(RuntimeError, match="bug in user code"):
        runtime.predict(np.array([[np.nan, 1.0]]))


def test_wrong_prediction_count_is_load_error(tmp_path: Path) -> None:
    source = """
    class Short:
        def load(self):
            pass

        def predict(self, inputs):
            return [0]
    """
    runtime = load_runtime("python", _write(tmp_path, "short.py", source))

    with pytest.raises(ModelLoadError, match="1 predictions for 3 input rows"):
        runtime.predict(np.zeros((3, 2)))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("class Nothing:\n    pass\n", r"exactly one class.*found: none"),
        (
            "class A:\n    def load(self): pass\n    def predict(self, x): return x\n"
            "class B:\n    def load(self): pass\n    def predict(self, x): return x\n",
            r"exactly one class.*found: A, B",
        ),
        ("def broken(:\n", "importing .* failed"),
        (
            "class Failing:\n    def load(self):\n        raise OSError('weights missing')\n"
            "    def predict(self, x): return x\n",
            r"Failing.load\(\) failed.*weights missing",
        ),
    ],
    ids=["no-class", "two-classes", "syntax-error", "load-fails"],
)
def test_bad_model_files_are_load_errors(tmp_path: Path, source: str, message: str) -> None:
    path = _write(tmp_path, "model.py", source)
    modules_before = set(sys.modules)

    with pytest.raises(ModelLoadError, match=message):
        load_runtime("python", path)
    assert not {m for m in set(sys.modules) - modules_before if m.startswith("berth_user_model_")}


def test_directory_without_python_file_is_load_error(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("")
    (tmp_path / "b.py").write_text("")

    with pytest.raises(ModelLoadError, match=r"model\.py"):
        load_runtime("python", tmp_path)
