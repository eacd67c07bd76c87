"""A PyTorch network as users have it: the Python file defining its nn.Module class, and a
state_dict file saved with `torch.save(model.state_dict(), path)`.

The weights are read with `torch.load(..., weights_only=True)`, which unpickles tensors and plain
containers only, never arbitrary objects: the code that runs is the class file the user
registered (as for the python flavor), not code hidden in the weights. A pickled whole module
(`torch.save(model)`) is refused for that reason.

A registered network is a folder holding the class file, the weights and `torch-module.json`
(`MODULE_MANIFEST`): {"code": "net.py", "weights": "net.pt", "class": "Net", "init_args": {}};
"class" and "init_args" are optional. Without "class" the file's one nn.Module subclass is used,
or, when it defines several (a block and the network made of blocks), the one whose parameters
are exactly the state_dict's.
"""

from __future__ import annotations

import inspect
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from berth.errors import ModelLoadError
from berth.runtimes import TORCH_MODULE_MANIFEST
from berth.runtimes.user_code import forget, import_file

# Keys under which training checkpoints commonly keep the network's state_dict.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class ModuleManifest:
    """What `torch-module.json` says: the class file, the weights, and how to build the class."""

    code: str
    weights: str
    class_name: str | None = None
    init_args: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"code": self.code, "weights": self.weights}
        if self.class_name:
            document["class"] = self.class_name
        if self.init_args:
            document["init_args"] = dict(self.init_args)
        return document


def read_manifest(path: Path) -> ModuleManifest:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path.name} is not valid JSON ({exc}); rewrite it") from exc
    if not isinstance(document, dict):
        raise ModelLoadError(f"{path.name} must be a JSON object with 'code' and 'weights'")
    code, weights = document.get("code"), document.get("weights")
    class_name, init_args = document.get("class"), document.get("init_args", {})
    if not isinstance(code, str) or not isinstance(weights, str):
        raise ModelLoadError(
            f"{path.name} must name the class file and the weights file: "
            '{"code": "net.py", "weights": "net.pt"}'
        )
    if class_name is not None and not isinstance(class_name, str):
        raise ModelLoadError(f"'class' in {path.name} must be a class name")
    if not isinstance(init_args, dict):
        raise ModelLoadError(f"'init_args' in {path.name} must be a JSON object of arguments")
    for name in (code, weights):
        if Path(name).name != name:
            raise ModelLoadError(f"{path.name} names '{name}'; give file names in its folder")
    return ModuleManifest(code, weights, class_name, init_args)


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (it holds compiled code, a state_dict does not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist()
        )


def load_module(folder: Path, manifest: ModuleManifest) -> nn.Module:
    """The network `manifest` describes, from the files in `folder`, in eval mode."""
    for name in (manifest.code, manifest.weights):
        if not (folder / name).is_file():
            raise ModelLoadError(
                f"{TORCH_MODULE_MANIFEST} names {name}, which is not in the folder"
            )
    state = read_state_dict(folder / manifest.weights)
    code = import_file(folder / manifest.code)
    try:
        module = _build(code, folder / manifest.code, manifest, state)
    except ModelLoadError:
        forget(code)
        raise
    module.eval()
    return module


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors a state_dict file holds, read without running code (weights_only)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        reason = (
            "it holds Python objects besides tensors"
            if isinstance(exc, pickle.UnpicklingError)
            else _first_line(exc)
        )
        raise ModelLoadError(
            f"{path.name} is not a state_dict that loads safely ({reason}); save the "
            "weights with torch.save(model.state_dict(), path): a pickled whole module runs "
            "code when loaded, so Berth does not load one"
        ) from exc
    state = _tensors(loaded)
    if state is None and isinstance(loaded, dict):
        for key in _CHECKPOINT_KEYS:
            state = _tensors(loaded.get(key))
            if state is not None:
                break
    if state is None:
        found = (
            f"a dict with keys {', '.join(map(str, list(loaded)[:6]))}"
            if isinstance(loaded, dict)
            else type(loaded).__name__
        )
        raise ModelLoadError(
            f"{path.name} holds {found}, not a state_dict; save the network's weights with "
            "torch.save(model.state_dict(), path)"
        )
    return state


def _tensors(value: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(value, dict) or not value:
        return None
    if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        return dict(value)
    return None


def _build(
    code: ModuleType, source: Path, manifest: ModuleManifest, state: dict[str, torch.Tensor]
) -> nn.Module:
    classes = [
        cls
        for _, cls in inspect.getmembers(code, inspect.isclass)
        if cls.__module__ == code.__name__ and issubclass(cls, nn.Module)
    ]
    if manifest.class_name is not None:
        named = [cls for cls in classes if cls.__name__ == manifest.class_name]
        if not named:
            found = ", ".join(cls.__name__ for cls in classes) or "none"
            raise ModelLoadError(
                f"{source.name} defines no nn.Module class {manifest.class_name} (found: {found})"
            )
        return _with_weights(_instantiate(named[0], manifest), state, source)
    if not classes:
        raise ModelLoadError(
            f"{source.name} defines no nn.Module subclass; give the file that defines the "
            "network's class"
        )
    if len(classes) == 1:
        return _with_weights(_instantiate(classes[0], manifest), state, source)
    matching = [
        candidate
        for candidate in (_try_instantiate(cls, manifest) for cls in classes)
        if candidate is not None and set(candidate.state_dict()) == set(state)
    ]
    if len(matching) != 1:
        names = ", ".join(cls.__name__ for cls in classes)
        raise ModelLoadError(
            f"{source.name} defines several nn.Module classes ({names}) and "
            f"{'none' if not matching else 'more than one'} of them has exactly the "
            "state_dict's parameters; name the network's class with --module-class"
        )
    return _with_weights(matching[0], state, source)


def _try_instantiate(cls: type[nn.Module], manifest: ModuleManifest) -> nn.Module | None:
    """The class built with the manifest's arguments; None for one that does not take them
    (a block that needs other arguments is not the network)."""
    try:
        return cls(**manifest.init_args)
    except Exception:
        return None


def _instantiate(cls: type[nn.Module], manifest: ModuleManifest) -> nn.Module:
    try:
        return cls(**manifest.init_args)
    except Exception as exc:
        arguments = json.dumps(dict(manifest.init_args)) if manifest.init_args else "no arguments"
        raise ModelLoadError(
            f"{cls.__name__}() with {arguments} failed ({type(exc).__name__}: {exc}); give its "
            """constructor arguments as JSON with --init-args '{"hidden": 32}'"""
        ) from exc


def _with_weights(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3]).rstrip(".")
        raise ModelLoadError(
            f"the weights do not fit {type(module).__name__} from {source.name}: {detail}; "
            "register the class the state_dict was saved from (and its --init-args)"
        ) from exc
    return module


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
