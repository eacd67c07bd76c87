"""An nn.Module network as one artifact: its class file, its state_dict and the manifest that
names them (`torch-module.json`), gathered into a folder registration stores as one version.

`berth models register NAME net.py --weights net.pt` builds the folder here, so local and remote
registration (which uploads the folder as an archive) store the same files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from berth.errors import InvalidInput
from berth.runtimes import TORCH_MODULE_MANIFEST


def parse_init_args(text: str | None) -> dict[str, Any]:
    """--init-args: a JSON object of the class's constructor arguments."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"--init-args is not JSON ({exc.msg}); write e.g. --init-args "
            """'{"in_features": 8, "hidden": 32}'"""
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInput(
            """--init-args must be a JSON object of keyword arguments, e.g. '{"hidden": 32}'"""
        )
    return value


@contextmanager
def torch_module_folder(
    code: Path,
    weights: Path,
    *,
    module_class: str | None = None,
    init_args: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """A temporary folder holding `code`, `weights` and the manifest naming them."""
    code, weights = code.expanduser(), weights.expanduser()
    if code.suffix.lower() != ".py" or not code.is_file():
        raise InvalidInput(
            f"with --weights, the model path is the Python file that defines the network's "
            f"nn.Module class; {code} is not a .py file"
        )
    if not weights.is_file():
        raise InvalidInput(
            f"--weights {weights} does not exist; give the file saved with "
            "torch.save(model.state_dict(), path)"
        )
    if weights.suffix.lower() == ".py" or weights.name == code.name:
        raise InvalidInput(
            f"--weights {weights.name} must be the state_dict file (.pt/.pth), not Python code"
        )
    manifest: dict[str, Any] = {"code": code.name, "weights": weights.name}
    if module_class:
        manifest["class"] = module_class
    if init_args:
        manifest["init_args"] = init_args
    with tempfile.TemporaryDirectory(prefix="berth-torch-") as parent:
        folder = Path(parent) / code.stem
        folder.mkdir()
        shutil.copyfile(code, folder / code.name)
        shutil.copyfile(weights, folder / weights.name)
        (folder / TORCH_MODULE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        yield folder
