from __future__ import annotations

from pathlib import Path

import pytest

from berth.errors import InvalidInput, ModelLoadError
from berth.runtimes import FLAVORS, detect_flavor, entry_file, load_runtime, needs_pickle_trust


def _touch(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")
    return directory


@pytest.mark.parametrize(
    ("name", "flavor"),
    [
        ("model.joblib", "sklearn"),
        ("model.pkl", "sklearn"),
        ("model.pickle", "sklearn"),
        ("model.skops", "sklearn"),
        ("model.onnx", "onnx"),
        ("model.ONNX", "onnx"),
        ("model.pt", "torch"),
        ("model.pth", "torch"),
        ("model.torchscript", "torch"),
        ("model.py", "python"),
    ],
)
def test_file_flavor_from_suffix(tmp_path: Path, name: str, flavor: str) -> None:
    _touch(tmp_path, name)

    assert detect_flavor(tmp_path / name) == flavor


def test_unknown_suffix_asks_for_flavor(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="--flavor"):
        detect_flavor(_touch(tmp_path, "model.bin") / "model.bin")


@pytest.mark.parametrize(
    ("names", "flavor"),
    [
        (["model.py", "helpers.py", "weights.npy"], "python"),
        (["predictor.py", "weights.npy"], "python"),
        (["model.onnx", "model.onnx.data"], "onnx"),
        (["a.py", "b.py", "model.joblib"], "sklearn"),
        (["net.pt", "README.md"], "torch"),
    ],
)
def test_directory_flavor(tmp_path: Path, names: list[str], flavor: str) -> None:
    assert detect_flavor(_touch(tmp_path / "artifact", *names)) == flavor


@pytest.mark.parametrize("names", [[], ["a.onnx", "b.onnx"], ["a.pt", "b.joblib"], ["notes.txt"]])
def test_ambiguous_directory_asks_for_flavor(tmp_path: Path, names: list[str]) -> None:
    with pytest.raises(InvalidInput, match="--flavor"):
        detect_flavor(_touch(tmp_path / "artifact", *names))


def test_entry_file(tmp_path: Path) -> None:
    directory = _touch(tmp_path / "artifact", "model.onnx", "model.onnx.data", "model.py")

    assert entry_file(directory, "onnx") == directory / "model.onnx"
    assert entry_file(directory, "python") == directory / "model.py"
    assert entry_file(directory / "model.onnx", "onnx") == directory / "model.onnx"
    with pytest.raises(InvalidInput, match="exactly one torch model file"):
        entry_file(directory, "torch")


def test_unknown_flavor_lists_flavors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=", ".join(FLAVORS)):
        load_runtime("tensorflow", tmp_path)
    with pytest.raises(InvalidInput, match="unknown flavor"):
        entry_file(tmp_path, "xgboost")


def test_missing_artifact_is_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runtime("sklearn", tmp_path / "nope.joblib")


def test_directory_without_entry_is_load_error(tmp_path: Path) -> None:
    directory = _touch(tmp_path / "artifact", "a.joblib", "b.joblib")

    with pytest.raises(ModelLoadError, match="exactly one sklearn model file"):
        load_runtime("sklearn", directory)


@pytest.mark.parametrize(
    ("flavor", "name", "pickle"),
    [
        ("sklearn", "model.joblib", True),
        ("sklearn", "model.PKL", True),
        ("sklearn", "model.pickle", True),
        ("sklearn", "model.bin", True),  # --flavor sklearn on any other file unpickles it
        ("sklearn", "model.skops", False),
        ("sklearn", "model.SKOPS", False),
        ("onnx", "model.onnx", False),
        ("python", "model.py", False),
    ],
)
def test_which_files_need_pickle_trust(flavor: str, name: str, pickle: bool) -> None:
    assert needs_pickle_trust(flavor, Path(name)) is pickle
