"""PyTorch networks on CPU: TorchScript files (`torch.jit.script(model).save(path)`), and
nn.Module classes with their state_dict (`berth.runtimes.torch_module`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from berth.errors import InvalidInput, ModelLoadError
from berth.registry.signature import Signature
from berth.runtimes import TORCH_MODULE_MANIFEST
from berth.runtimes.base import ModelInput, Prediction
from berth.runtimes.torch_module import (
    ModuleManifest,
    is_torchscript,
    load_module,
    read_manifest,
)


class TorchRuntime:
    flavor: str = "torch"

    def __init__(
        self,
        module: Any,
        float_dtype: np.dtype[Any] | None,
        manifest: ModuleManifest | None = None,
    ) -> None:
        self.module = module
        self.float_dtype = float_dtype
        self.manifest = manifest
        """How an nn.Module network was built; None for TorchScript."""

    @property
    def scripted(self) -> bool:
        return self.manifest is None

    def predict(self, inputs: ModelInput) -> Prediction:
        tensors = self.tensors(inputs)
        try:
            with torch.inference_mode():
                output = self.module(*tensors)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidInput(f"the torch model rejected the input: {_reason(exc)}") from exc
        return Prediction(predictions=_to_numpy(output))

    def declared_signature(self) -> Signature | None:
        return None

    def tensors(self, inputs: ModelInput) -> list[torch.Tensor]:
        """The positional arguments of forward() for a batch (named inputs in their order)."""
        if isinstance(inputs, dict):
            return [self._tensor(array, name) for name, array in inputs.items()]
        array = inputs.to_numpy() if isinstance(inputs, pd.DataFrame) else inputs
        return [self._tensor(array, "input")]

    def _tensor(self, array: np.ndarray[Any, Any], name: str) -> torch.Tensor:
        if array.dtype.kind not in "biuf":
            raise InvalidInput(
                f"input '{name}' has dtype {array.dtype}; torch models take numeric "
                "arrays (bool, integers or floats)"
            )
        array = np.ascontiguousarray(array)
        # Float64 data (JSON numbers, pandas) meets float32 weights; cast rather than fail.
        if array.dtype.kind == "f" and self.float_dtype is not None:
            array = array.astype(self.float_dtype, copy=False)
        if not array.flags.writeable:
            array = array.copy()
        return torch.from_numpy(array)


def load(path: Path) -> TorchRuntime:
    """A TorchScript file, a `torch-module.json` folder, or a state_dict beside its class file."""
    _one_thread_per_call()
    if path.name == TORCH_MODULE_MANIFEST:
        return _module_runtime(path.parent, read_manifest(path))
    if path.is_file() and not is_torchscript(path):
        code = _class_file_beside(path)
        if code is None:
            raise ModelLoadError(
                f"{path.name} is not TorchScript: it looks like a state_dict (or a pickled "
                "nn.Module). Register it with the file that defines the network's class: "
                f"berth models register NAME net.py --weights {path.name} --sample rows.npy; "
                "or save TorchScript with torch.jit.script(model).save(path)"
            )
        return _module_runtime(path.parent, ModuleManifest(code.name, path.name))
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript in favour of torch.export, but still runs it.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path} as TorchScript ({_reason(exc)}); save the model with "
            "torch.jit.script(model).save(path), or register the nn.Module class file with "
            "its state_dict (berth models register NAME net.py --weights net.pt)"
        ) from exc
    module.eval()
    return TorchRuntime(module, _float_dtype(module))


def _one_thread_per_call() -> None:
    """One intra-op thread per call, as for onnxruntime: parallelism comes from worker processes
    and concurrent requests. torch's default (a thread per core, spinning at barriers) made a
    small CNN at batch 64 twice as slow on two busy cores, where requests run side by side.
    OMP_NUM_THREADS, when set, is the operator's choice and is left alone."""
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _module_runtime(folder: Path, manifest: ModuleManifest) -> TorchRuntime:
    module = load_module(folder, manifest)
    return TorchRuntime(module, _float_dtype(module), manifest)


def _class_file_beside(weights: Path) -> Path | None:
    scripts = [p for p in weights.parent.glob("*.py") if p.is_file()]
    return scripts[0] if len(scripts) == 1 else None


_NUMPY_FLOATS = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


def _float_dtype(module: Any) -> np.dtype[Any] | None:
    """The numpy dtype of the module's first float weight (None for bfloat16 or no weights)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            name = _NUMPY_FLOATS.get(tensor.dtype)
            return None if name is None else np.dtype(name)
    return None


def _to_numpy(output: Any) -> np.ndarray[Any, Any]:
    if isinstance(output, tuple | list) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ModelLoadError(
            f"the torch model returned {type(output).__name__}; forward() must return a "
            "tensor, or a tuple whose first element is the prediction tensor"
        )
    array: np.ndarray[Any, Any] = output.detach().cpu().numpy()
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array


def _reason(exc: Exception) -> str:
    """The error itself, without TorchScript's serialized-code traceback."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if "Traceback of TorchScript" in str(exc) else lines[0]
