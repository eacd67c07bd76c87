"""The optimized forms of a PyTorch network: ONNX, TorchScript, int8, pruned.

Each works on the network as Berth serves it (`berth.runtimes.torch.TorchRuntime`): an nn.Module
built from its class file and state_dict, or a TorchScript module. Nothing here judges whether
a form computes what its source does; `berth.optimize.equivalence` does, on the check rows.

- ONNX: `torch.onnx.export` with the TorchScript-based exporter (the dynamo exporter needs the
  onnxscript package and cannot take a TorchScript source), every input and output with a
  dynamic batch axis, opset `OPSET`. Inputs are named as the signature names them, so clients
  send the same requests to the ONNX version.
- TorchScript: `torch.jit.script`, or `torch.jit.trace` on check rows when the module's Python
  cannot be scripted; which one is recorded.
- int8: dynamic quantization of the Linear layers with `torch.ao.quantization` (then traced),
  for a TorchScript result; an ONNX result is quantized by onnxruntime (`quantize.quantize_int8`).
- Pruning: magnitude (L1, unstructured) pruning of every Linear and Conv weight, layer by layer,
  written into the weights (permanent: no masks or hooks remain), on a copy of the network.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from berth.errors import InvalidInput
from berth.registry.signature import Signature
from berth.runtimes import TORCH_MODULE_MANIFEST
from berth.runtimes.base import ModelInput
from berth.runtimes.torch import TorchRuntime

OPSET = 17
"""The ONNX opset of exported graphs: onnxruntime has run it since 1.14 (2023), so edge devices
with an older runtime than this machine's still load the graph."""

PRUNABLE = ("Linear", "Conv1d", "Conv2d", "Conv3d")
"""Layer types whose weights are pruned (by class name, which TorchScript modules keep)."""
_PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

EXPORT_ROWS = 4


class TorchConversionError(InvalidInput):
    """The network cannot take the asked form (export, scripting or quantization failed)."""


@dataclass(frozen=True)
class Pruned:
    module: Any
    amount: float
    sparsity: float
    """Share of the pruned layers' weights that are zero afterwards."""
    layers: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "amount": self.amount,
            "method": "l1_unstructured",
            "layers": self.layers,
            "sparsity": round(self.sparsity, 4),
        }


def example_tensors(runtime: TorchRuntime, rows: ModelInput) -> tuple[torch.Tensor, ...]:
    """forward()'s arguments for a few check rows: what export and tracing run the network on."""
    return tuple(runtime.tensors(rows))


ONNX_ADVICE = "keep serving the source version, or optimize --to torchscript"
"""What to do when the exporter fails, unless the caller says otherwise."""


def to_onnx(
    module: Any,
    signature: Signature,
    example: tuple[torch.Tensor, ...],
    advice: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The network as an ONNX graph, and how it was exported.

    `advice`: the end of the one-line error when the exporter fails (`ONNX_ADVICE` by default).
    """
    inputs = list(signature.input_names) if signature.kind == "tensor" else ["input"]
    if len(inputs) != len(example):
        inputs = [f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["input"]
    axes = {name: {0: "batch"} for name in [*inputs, "output"]}
    try:
        # Without grad: a TorchScript module first run with grad enabled keeps a plan that
        # fails when Berth then predicts with it under inference_mode (the check that follows).
        with _quiet(), torch.no_grad(), tempfile.TemporaryDirectory(prefix="berth-") as folder:
            path = Path(folder) / "model.onnx"
            torch.onnx.export(
                module,
                example,
                path,
                dynamo=False,
                input_names=inputs,
                output_names=["output"],
                dynamic_axes=axes,
                opset_version=OPSET,
            )
            graph = path.read_bytes()
    except Exception as exc:  # the exporter raises anything; reported
        raise TorchConversionError(
            f"torch.onnx.export could not export the network ({_first_line(exc)}); "
            f"{advice or ONNX_ADVICE}"
        ) from exc
    detail = {"exporter": f"torch.onnx (TorchScript-based) {torch.__version__}", "opset": OPSET}
    return graph, detail


def to_torchscript(module: Any, example: tuple[torch.Tensor, ...]) -> tuple[bytes, str]:
    """The network as TorchScript bytes, and 'script' or 'trace' (how it was compiled)."""
    if isinstance(module, torch.jit.ScriptModule):
        return _saved(module), "script"
    scripted: Any
    try:
        with _quiet():
            scripted = torch.jit.script(module)
        how = "script"
    except Exception:  # scripting refuses much dynamic Python; tracing records one run instead
        try:
            with _quiet(), torch.no_grad():
                scripted = torch.jit.trace(module, example)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise TorchConversionError(
                f"the network can be neither scripted nor traced ({_first_line(exc)}); keep "
                "serving the source version"
            ) from exc
        how = "trace"
    return _saved(scripted), how


def quantize_dynamic(module: Any, example: tuple[torch.Tensor, ...]) -> bytes:
    """The network with int8 Linear layers (dynamic quantization), traced to TorchScript."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TorchConversionError(
            "torch.ao dynamic quantization needs the nn.Module, and this version is TorchScript; "
            "quantize its ONNX form instead: --to onnx --quantize int8"
        )
    if not any(isinstance(m, nn.Linear) for m in module.modules()):
        raise TorchConversionError(
            "dynamic int8 quantization rewrites Linear layers, and this network has none; "
            "use --to onnx --quantize int8 (which also quantizes convolutions)"
        )
    quantization = torch.ao.quantization
    try:
        with _quiet():
            quantized = quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                copy.deepcopy(module), {nn.Linear}, dtype=torch.qint8
            )
            with torch.no_grad():
                traced = torch.jit.trace(quantized, example)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise TorchConversionError(f"int8 quantization failed ({_first_line(exc)})") from exc
    return _saved(traced)


def prune(module: Any, amount: float) -> Pruned:
    """A copy of the network with the `amount` smallest weights of each Linear/Conv layer zeroed."""
    pruned = copy.deepcopy(module)
    method = torch_prune.L1Unstructured(amount)
    zeros = total = layers = 0
    with torch.no_grad():
        for layer in pruned.modules():
            weight = getattr(layer, "weight", None)
            if not _prunable(layer) or not isinstance(weight, torch.Tensor):
                continue
            mask = method.compute_mask(weight, default_mask=torch.ones_like(weight))  # type: ignore[no-untyped-call]
            weight.mul_(mask)
            zeros += int((weight == 0).sum())
            total += weight.numel()
            layers += 1
    if not layers:
        raise TorchConversionError(
            "--prune zeroes the weights of Linear and Conv layers, and this network has none"
        )
    return Pruned(pruned, amount, zeros / total, layers)


def module_folder(
    source_folder: Path, manifest: dict[str, Any], module: nn.Module, into: Path
) -> Path:
    """A registrable nn.Module folder: the source's class file with `module`'s state_dict."""
    folder = into / "network"
    folder.mkdir()
    shutil.copyfile(source_folder / manifest["code"], folder / manifest["code"])
    weights = Path(manifest["weights"]).stem + ".pruned.pt"
    torch.save(module.state_dict(), folder / weights)
    written = {**manifest, "weights": weights}
    (folder / TORCH_MODULE_MANIFEST).write_text(json.dumps(written, indent=2) + "\n")
    return folder


def _prunable(layer: Any) -> bool:
    # Subclasses count: nn.MultiheadAttention's out_proj is one of nn.Linear, for instance.
    return isinstance(layer, _PRUNABLE_TYPES) or _layer_type(layer) in PRUNABLE


def _layer_type(layer: Any) -> str:
    # A TorchScript module is a RecursiveScriptModule; it keeps its class name as original_name.
    name = getattr(layer, "original_name", None)
    return name if isinstance(name, str) else type(layer).__name__


def _saved(module: Any) -> bytes:
    buffer = io.BytesIO()
    with _quiet():
        torch.jit.save(module, buffer)
    return buffer.getvalue()


@contextmanager
def _quiet() -> Iterator[None]:
    """torch 2.13 warns that TorchScript, its ONNX exporter and torch.ao are deprecated; they
    still work, and the warnings would reach the user's terminal as noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
