"""Runtimes: one module per flavor, each with a `load(path) -> Runtime` function.

Flavor modules are imported only when a model of that flavor is loaded, so onnxruntime and
torch stay optional.

Trust: a scikit-learn pickle (.joblib/.pkl/.pickle, or any sklearn file that is not .skops) is
unpickled only when the caller passes `pickle_sha256`, the digest the registry recorded for a
version registered with --trust-pickle; the runtime reads the file once, checks those bytes
against the digest and unpickles the same bytes. skops files load types beyond the built-in
allow-list only when they are named in `trusted_types`. `loading.load_version(registry, version)`
is the one caller that passes both, from the version's record and the server settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from berth.errors import InvalidInput, ModelLoadError

if TYPE_CHECKING:  # base imports numpy and pandas; FLAVORS is read by `berth --help`
    from berth.runtimes.base import Runtime

FLAVORS = ("sklearn", "onnx", "python", "torch")
SKOPS_SUFFIX = ".skops"
TORCH_MODULE_MANIFEST = "torch-module.json"
"""Names the class file and state_dict of a registered nn.Module (`berth.runtimes.torch_module`)."""


class UntrustedArtifact(ModelLoadError):
    """The artifact needs trust it was not given (a pickle, or skops types off the allow-list)."""


def pickle_refusal(name: str) -> str:
    """Why a pickle is not loaded without trust, and what to do instead."""
    return (
        f"{name} is a pickle (joblib/pickle) file, and loading a pickle runs any code it holds; "
        "Berth loads one only for a version registered with --trust-pickle, after its sha256 "
        'matches. Save the model with skops instead (`skops.io.dump(model, "model.skops")`) and '
        "register the .skops file, or, if you trust whoever made this file, register it with "
        "`berth models register NAME PATH --trust-pickle`"
    )


_SUFFIX_FLAVORS = {
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".skops": "sklearn",
    ".onnx": "onnx",
    ".pt": "torch",
    ".pth": "torch",
    ".torchscript": "torch",
    ".py": "python",
}

MODEL_FILE_SUFFIXES = tuple(_SUFFIX_FLAVORS)
"""Suffixes of the model files Berth recognises (lowercase)."""

# The optional package each flavor needs, and the extra that installs it.
_EXTRAS = {"onnx": ("onnxruntime", "onnx"), "torch": ("torch", "torch")}


def detect_flavor(path: Path) -> str:
    """The flavor of an artifact file or directory, from file extensions."""
    if path.is_dir():
        return _detect_directory_flavor(path)
    flavor = _SUFFIX_FLAVORS.get(path.suffix.lower())
    if flavor is None:
        raise InvalidInput(
            f"cannot tell the flavor of {path} from its extension '{path.suffix}'; "
            f"pass --flavor ({', '.join(FLAVORS)})"
        )
    return flavor


def entry_file(path: Path, flavor: str) -> Path:
    """The file a flavor loads: `path` itself, or for a directory the one file of that flavor."""
    _check_flavor(flavor)
    if not path.is_dir():
        return path
    if flavor == "torch" and (path / TORCH_MODULE_MANIFEST).is_file():
        return path / TORCH_MODULE_MANIFEST
    if flavor == "python":
        found = python_entry(path)
        if found is None:
            raise InvalidInput(
                f"directory {path} has no model.py and not exactly one .py file; "
                "name the file that defines your model class model.py"
            )
        return found
    candidates = [f for f in _files(path) if _SUFFIX_FLAVORS.get(f.suffix.lower()) == flavor]
    if len(candidates) != 1:
        found_names = ", ".join(f.name for f in candidates) or "none"
        raise InvalidInput(
            f"directory {path} must hold exactly one {flavor} model file (found: {found_names}); "
            "keep one model file in it or pass the file itself"
        )
    return candidates[0]


def python_entry(directory: Path) -> Path | None:
    """model.py, or the only .py file, in a directory; None if neither exists."""
    model_py = directory / "model.py"
    if model_py.is_file():
        return model_py
    scripts = [f for f in _files(directory) if f.suffix.lower() == ".py"]
    return scripts[0] if len(scripts) == 1 else None


def needs_pickle_trust(flavor: str, entry: Path) -> bool:
    """Whether loading `entry` with `flavor` unpickles it (scikit-learn files other than skops)."""
    return flavor == "sklearn" and entry.suffix.lower() != SKOPS_SUFFIX


def load_runtime(
    flavor: str,
    path: Path,
    *,
    trusted_types: Iterable[str] = (),
    pickle_sha256: str | None = None,
) -> Runtime:
    """Load an artifact (file or directory) with the runtime of `flavor`.

    `trusted_types`: types a skops file may hold beyond the built-in allow-list.
    `pickle_sha256`: the only digest a pickle may have to be unpickled; without it a pickle is
    refused (`UntrustedArtifact`). Other flavors ignore both.
    """
    _check_flavor(flavor)
    if not path.exists():
        raise ModelLoadError(f"artifact {path} does not exist; check the version's stored files")
    try:
        target = entry_file(path, flavor)
    except InvalidInput as exc:
        raise ModelLoadError(exc.message) from exc
    try:
        module = importlib.import_module(f"berth.runtimes.{flavor}")
    except ModuleNotFoundError as exc:
        package, extra = _EXTRAS.get(flavor, (None, None))
        if package is None or exc.name is None or exc.name.split(".")[0] != package:
            raise
        raise ModelLoadError(
            f"the {flavor} flavor needs the '{package}' package, which is not installed; "
            f"run: pip install 'berth[{extra}]'"
        ) from exc
    if flavor == "sklearn":
        runtime: Runtime = module.load(
            target, trusted_types=tuple(trusted_types), pickle_sha256=pickle_sha256
        )
    else:
        runtime = module.load(target)
    return runtime


def _check_flavor(flavor: str) -> None:
    if flavor not in FLAVORS:
        raise InvalidInput(f"unknown flavor '{flavor}'; use one of {', '.join(FLAVORS)}")


def _files(directory: Path) -> list[Path]:
    return sorted(f for f in directory.iterdir() if f.is_file() and not f.name.startswith("."))


def _detect_directory_flavor(directory: Path) -> str:
    if (directory / TORCH_MODULE_MANIFEST).is_file():
        return "torch"
    if python_entry(directory) is not None:
        return "python"
    model_files = [
        f for f in _files(directory) if _SUFFIX_FLAVORS.get(f.suffix.lower(), "python") != "python"
    ]
    if len(model_files) == 1:
        return _SUFFIX_FLAVORS[model_files[0].suffix.lower()]
    found = ", ".join(f.name for f in model_files) or "no model file"
    raise InvalidInput(
        f"cannot tell the flavor of directory {directory} (found {found}); "
        f"pass --flavor ({', '.join(FLAVORS)}), or for a python model name its file model.py"
    )
