from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from berth.errors import InvalidInput, ModelLoadError
from berth.runtimes import load_runtime

pytest.importorskip("torch")
import torch

# torch 2.13 deprecates TorchScript (still supported); the tests have to use it to build models.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


class TwoInputs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a * 10 + b, a


def _scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))  # type: ignore[no-untyped-call]
    return path


@pytest.fixture(scope="module")
def linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1).eval()


def _expected(module: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        output: np.ndarray = module(torch.from_numpy(inputs.astype(np.float32))).numpy()
    return output


def test_linear_model_predicts_flat_values(tmp_path: Path, linear: torch.nn.Module) -> None:
    inputs = np.random.default_rng(0).normal(size=(4, 3))  # float64, cast to the weights' float32

    runtime = load_runtime("torch", _scripted(linear, tmp_path / "model.pt"))
    result = runtime.predict(inputs)

    assert runtime.flavor == "torch"
    assert runtime.declared_signature() is None
    assert result.predictions.shape == (4,)
    assert_allclose(result.predictions, _expected(linear, inputs)[:, 0], rtol=1e-6)
    assert result.probabilities is None


def test_multi_column_output_and_frame_input(tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = torch.nn.Linear(2, 3).eval()
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, -1.0]})

    result = load_runtime("torch", _scripted(module, tmp_path / "m.pt")).predict(frame)

    assert result.predictions.shape == (2, 3)
    assert_allclose(result.predictions, _expected(module, frame.to_numpy()), rtol=1e-6)


def test_named_inputs_are_positional_and_tuple_output_takes_first(tmp_path: Path) -> None:
    runtime = load_runtime("torch", _scripted(TwoInputs(), tmp_path / "two.pt"))
    a = np.array([[1.0], [2.0]], dtype=np.float32)
    b = np.array([[3.0], [4.0]], dtype=np.float32)

    result = runtime.predict({"a": a, "b": b})

    assert_allclose(result.predictions, [13.0, 24.0])


def test_shape_mismatch_is_invalid_input(tmp_path: Path, linear: torch.nn.Module) -> None:
    runtime = load_runtime("torch", _scripted(linear, tmp_path / "model.pt"))

    with pytest.raises(InvalidInput, match="cannot be multiplied") as info:
        runtime.predict(np.ones((2, 5), dtype=np.float32))
    assert "Traceback" not in info.value.message


def test_string_input_is_invalid_input(tmp_path: Path, linear: torch.nn.Module) -> None:
    runtime = load_runtime("torch", _scripted(linear, tmp_path / "model.pt"))

    with pytest.raises(InvalidInput, match="numeric"):
        runtime.predict(np.array([["a", "b", "c"]]))


def test_garbage_and_state_dict_are_load_errors(tmp_path: Path, linear: torch.nn.Module) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    torch.save(linear.state_dict(), tmp_path / "weights.pt")

    for name in ["garbage.pt", "weights.pt"]:
        with pytest.raises(ModelLoadError, match=r"torch\.jit\.script"):
            load_runtime("torch", tmp_path / name)


def test_missing_torch_says_what_to_install(
    tmp_path: Path, linear: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _scripted(linear, tmp_path / "model.pt")
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "berth.runtimes.torch", raising=False)

    with pytest.raises(ModelLoadError, match=r"pip install 'berth\[torch\]'"):
        load_runtime("torch", path)
