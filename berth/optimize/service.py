"""`optimize`: make a faster or smaller form of a version, prove it equivalent, and register it
with its lineage.

The CLI (`berth models optimize`) and the admin API call this one function. Steps: load the
source version as it is served; gather the check rows; make the form asked for (`--to`):
- scikit-learn, XGBoost and LightGBM models convert to ONNX, ONNX versions are quantized;
- torch networks (`berth.optimize.torch_forms`) export to ONNX, compile to TorchScript, or keep
  their own form, optionally pruned (`--prune`) and quantized to int8 (`--quantize`);
run both on the check rows; refuse with the measured differences when they differ, else measure
the size and speed of both and register the new form (`berth.registration`: content-addressed,
loaded and smoke-tested like any version) as the next version of the same model, with the
source's signature, example rows, tags and drift reference, linked to its source. No alias
moves unless one is asked for.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from berth.errors import InvalidInput
from berth.optimize.convert import Converted, to_onnx
from berth.optimize.data import CheckData, check_data
from berth.optimize.equivalence import (
    MAX_ACCURACY_DROP,
    MIN_AGREEMENT,
    TOLERANCE,
    EquivalenceReport,
    NotEquivalent,
    check,
)
from berth.optimize.quantize import QUANTIZATIONS, quantize_int8
from berth.optimize.speed import SpeedReport, compare
from berth.registration.service import RegisterRequest, register
from berth.registry.references import check_name
from berth.registry.service import Registry
from berth.registry.versions import Lineage, VersionInfo
from berth.runtimes import load_runtime
from berth.runtimes.base import Runtime
from berth.runtimes.loading import artifact_path, load_version

if TYPE_CHECKING:  # torch is optional: imported when a torch network is optimized
    import torch

    from berth.runtimes.torch import TorchRuntime

QUANTIZED_TOLERANCE = 1e-2
"""The default probability tolerance of a lossy form, int8 or pruned (--tolerance changes it)."""

TARGETS = ("onnx", "torchscript", "torch")
"""What `--to` may ask for: an ONNX graph, TorchScript, or a torch network's own form."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Made:
    """The optimized form, written into the work folder, before it is checked."""

    path: Path
    flavor: str
    detail: dict[str, Any]
    """How it was made, for the lineage (converter or exporter, opset, pruning ...)."""
    precision: str | None = None


@dataclass(frozen=True)
class SizeReport:
    source_bytes: int
    optimized_bytes: int

    def to_dict(self) -> dict[str, Any]:
        ratio = self.optimized_bytes / self.source_bytes if self.source_bytes else None
        return {
            "source_bytes": self.source_bytes,
            "optimized_bytes": self.optimized_bytes,
            "ratio": None if ratio is None else round(ratio, 4),
        }


@dataclass(frozen=True)
class OptimizeReport:
    source: VersionInfo
    version: VersionInfo
    """The registered optimized version."""
    check: EquivalenceReport
    data: CheckData
    speed: SpeedReport
    precision: str | None
    """Numeric input type of a converted graph ('double' or 'float'); None otherwise."""
    quantized: str | None
    target: str = "onnx"
    size: SizeReport | None = None
    pruned: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.ref,
            "source_flavor": self.source.flavor,
            "version": self.version.to_dict(),
            "target": self.target,
            "check": {**self.check.to_dict(), "data": self.data.to_dict()},
            "speed": self.speed.to_dict(),
            "size": None if self.size is None else self.size.to_dict(),
            "precision": self.precision,
            "quantized": self.quantized,
            "pruned": self.pruned,
        }


def optimize(
    registry: Registry,
    reference: str,
    *,
    data: Path | None = None,
    quantize: str | None = None,
    tolerance: float | None = None,
    alias: str | None = None,
    actor: str | None = None,
    address: str | None = None,
    progress: Progress | None = None,
    to: str | None = None,
    prune: float | None = None,
    max_accuracy_drop: float | None = None,
) -> OptimizeReport:
    """Register an equivalent optimized form of `reference` as a new version, or refuse and
    say why.

    `tolerance` bounds probability (or relative value) differences: at most 1e-4 for a lossless
    form (it may be tightened), `QUANTIZED_TOLERANCE` by default for int8 or pruned forms, which
    labelled check rows judge by accuracy instead (`max_accuracy_drop`).
    """
    step = progress or _silent
    limit = check_tolerance(tolerance, quantize, prune=prune)
    drop = check_accuracy_drop(max_accuracy_drop)
    if alias is not None:
        check_name("alias", alias)
    source = registry.resolve(reference)
    target = choose_target(source, to, quantize=quantize, prune=prune)
    step(f"loading {source.ref}")
    source_runtime = _source_runtime(registry, source, quantize, prune)
    step("preparing the check rows")
    rows = check_data(source, data)
    with tempfile.TemporaryDirectory(prefix="berth-optimize-") as work:
        folder = Path(work)
        if source.flavor == "torch":
            made = _torch_form(registry, source, source_runtime, rows, target, quantize, prune,
                               folder, step)  # fmt: skip
        else:
            made = _onnx_form(registry, source, source_runtime, quantize, folder, step)
        optimized = load_runtime(made.flavor, made.path)
        step(f"checking equivalence on {rows.rows} rows")
        lossy = quantize is not None or prune is not None
        result = check(
            source_runtime, optimized, rows, tolerance=limit,
            max_accuracy_drop=drop if lossy else None,
        )  # fmt: skip
        if not result.passed:
            raise NotEquivalent(refusal(source, result, rows, quantize, target=target), result)
        step("measuring speed")
        speed = compare(source_runtime, optimized, rows)
        size = SizeReport(source.artifact.size_bytes, _size(made.path))
        step("registering")
        lineage = _lineage(source, made, quantize, result, rows, speed, size)
        request = _register_request(source, made, folder, lineage, alias, actor, address)
        version = register(registry, request)
    pruned = made.detail.get("pruned")
    return OptimizeReport(
        source, version, result, rows, speed, made.precision, quantize, target, size, pruned
    )


def choose_target(
    source: VersionInfo, to: str | None, *, quantize: str | None, prune: float | None
) -> str:
    """The form to make: `to`, or by default ONNX (a torch network's own form with --prune)."""
    if to is not None and to not in TARGETS:
        raise InvalidInput(f"unknown --to '{to}'; use one of {', '.join(TARGETS)}")
    if source.flavor != "torch":
        if to not in (None, "onnx"):
            raise InvalidInput(
                f"--to {to} makes a PyTorch form, and {source.ref} is not a torch network "
                f"(flavor {source.flavor}); it optimizes to onnx"
            )
        if prune is not None:
            raise InvalidInput(
                f"--prune zeroes the weights of torch networks; {source.ref} is not one "
                f"(flavor {source.flavor})"
            )
        return "onnx"
    target = to or ("torch" if prune is not None and quantize is None else "onnx")
    if target == "torch" and prune is None:
        raise InvalidInput(
            f"--to torch keeps {source.ref}'s own form, so it needs --prune to change anything; "
            "or use --to onnx or --to torchscript"
        )
    if target == "torch" and quantize is not None:
        raise InvalidInput(
            "an int8 network is saved as TorchScript or ONNX; use --to torchscript or --to onnx "
            "with --quantize int8"
        )
    return target


def check_accuracy_drop(drop: float | None) -> float:
    if drop is None:
        return MAX_ACCURACY_DROP
    if not math.isfinite(drop) or not 0 <= drop <= 1:
        raise InvalidInput(
            f"--max-accuracy-drop must be a share between 0 and 1 (0.01 is one point), got {drop}"
        )
    return drop


def _torch_form(
    registry: Registry,
    source: VersionInfo,
    runtime: Runtime,
    rows: CheckData,
    target: str,
    quantize: str | None,
    prune: float | None,
    folder: Path,
    step: Progress,
) -> Made:
    if target == "onnx":
        exported = torch_graph(source, runtime, rows, quantize=quantize, prune=prune, progress=step)
        path = folder / f"{source.model}.onnx"
        path.write_bytes(exported.onnx_bytes)
        return Made(path, "onnx", exported.detail)
    # Imported here: torch is optional, and scikit-learn optimizations do without it.
    from berth.optimize import torch_forms

    network = _torch_network(source, runtime, rows, target, prune, step)
    module, example, detail = network.module, network.example, network.detail
    path = folder / f"{source.model}.pt"
    if target == "torchscript":
        if quantize is not None:
            step("quantizing the Linear layers to int8")
            path.write_bytes(torch_forms.quantize_dynamic(module, example))
            detail.update(compiled="trace", quantized_with="torch.ao")
        else:
            step("compiling to TorchScript")
            compiled, how_compiled = torch_forms.to_torchscript(module, example)
            path.write_bytes(compiled)
            detail["compiled"] = how_compiled
        return Made(path, "torch", detail)
    if network.runtime.manifest is None:
        compiled, _ = torch_forms.to_torchscript(module, example)
        path.write_bytes(compiled)
        return Made(path, "torch", detail)
    source_folder = artifact_path(registry, source).parent
    manifest = network.runtime.manifest.to_dict()
    return Made(torch_forms.module_folder(source_folder, manifest, module, folder), "torch", detail)


@dataclass(frozen=True)
class TorchGraph:
    """A torch network exported to ONNX, and how it was made."""

    onnx_bytes: bytes
    detail: dict[str, Any]
    """For the lineage and export's report: method, exporter, opset, and pruned and
    quantized_with when the network was pruned or the graph quantized."""

    @property
    def exporter(self) -> str:
        return str(self.detail["exporter"])

    @property
    def opset(self) -> int:
        return int(self.detail["opset"])


def torch_graph(
    source: VersionInfo,
    runtime: Runtime,
    rows: CheckData,
    *,
    quantize: str | None,
    prune: float | None = None,
    progress: Progress | None = None,
    advice: str | None = None,
) -> TorchGraph:
    """A torch version's network as an ONNX graph: pruned first with `prune`, exported on a few
    check rows, quantized to int8 after with `quantize`. `optimize --to onnx` and `berth export`
    both make their graph here, so the two are the same graph with the same lineage detail.

    `advice`: what the user can do when the exporter fails (optimize's advice by default).
    """
    from berth.optimize import torch_forms

    step = progress or _silent
    network = _torch_network(source, runtime, rows, "onnx", prune, step)
    step("exporting to ONNX")
    graph, how = torch_forms.to_onnx(network.module, source.signature, network.example, advice)
    detail = {**network.detail, **how}
    if quantize is not None:
        step("quantizing to int8")
        graph = quantize_int8(graph)
        detail["quantized_with"] = "onnxruntime"
    return TorchGraph(graph, detail)


@dataclass(frozen=True)
class _TorchNetwork:
    """The network to make a form of (pruned when asked), and the rows it is exported on."""

    runtime: TorchRuntime
    module: Any
    example: tuple[torch.Tensor, ...]
    detail: dict[str, Any]


def _torch_network(
    source: VersionInfo,
    runtime: Runtime,
    rows: CheckData,
    target: str,
    prune: float | None,
    step: Progress,
) -> _TorchNetwork:
    # Imported here: torch is optional, and scikit-learn optimizations do without it.
    from berth.optimize import torch_forms
    from berth.runtimes.torch import TorchRuntime

    if not isinstance(runtime, TorchRuntime):
        raise InvalidInput(f"{source.ref} did not load as a torch network")
    module = runtime.module
    example = torch_forms.example_tensors(
        runtime, rows.take(np.arange(min(torch_forms.EXPORT_ROWS, rows.rows)))
    )
    detail: dict[str, Any] = {"method": target}
    if prune is not None:
        step(f"pruning {prune:.0%} of the Linear and Conv weights")
        pruned = torch_forms.prune(module, prune)
        module = pruned.module
        detail["pruned"] = pruned.to_dict()
    return _TorchNetwork(runtime, module, example, detail)


def _onnx_form(
    registry: Registry,
    source: VersionInfo,
    runtime: Runtime,
    quantize: str | None,
    folder: Path,
    step: Progress,
) -> Made:
    graph, converted = onnx_graph(
        source, runtime, lambda: artifact_path(registry, source).read_bytes(), quantize, step
    )
    path = folder / f"{source.model}.onnx"
    path.write_bytes(graph)
    detail = {
        "method": "onnx",
        "converter": converted.converter if converted else None,
        "precision": converted.precision if converted else None,
    }
    return Made(path, "onnx", detail, converted.precision if converted else None)


def onnx_graph(
    source: VersionInfo,
    runtime: Runtime,
    read_source: Callable[[], bytes],
    quantize: str | None,
    step: Progress,
) -> tuple[bytes, Converted | None]:
    """The ONNX graph of a scikit-learn version (converted) or an ONNX version (`read_source`:
    its own bytes), quantized to int8 if asked; shared with export."""
    step("converting to ONNX" if source.flavor != "onnx" else "reading the ONNX graph")
    converted = convert_source(source, runtime, float_only=quantize is not None)
    graph = converted.onnx_bytes if converted else read_source()
    if quantize is not None:
        step("quantizing to int8")
        graph = quantize_int8(graph)
    return graph, converted


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _silent(_: str) -> None:
    return None


def check_tolerance(
    tolerance: float | None, quantize: str | None, *, prune: float | None = None
) -> float:
    """The tolerance in effect for a form (lossy: quantized or pruned); shared with export."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InvalidInput(
            f"unknown quantization '{quantize}'; use one of {', '.join(QUANTIZATIONS)}"
        )
    if prune is not None and (not math.isfinite(prune) or not 0 < prune < 1):
        raise InvalidInput(
            f"--prune is the share of each layer's weights to zero, between 0 and 1 "
            f"(e.g. 0.3), got {prune}"
        )
    lossy = quantize is not None or prune is not None
    if tolerance is None:
        return QUANTIZED_TOLERANCE if lossy else TOLERANCE
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InvalidInput(f"--tolerance must be a number of at least 0, got {tolerance}")
    if not lossy and tolerance > TOLERANCE:
        raise InvalidInput(
            f"--tolerance {tolerance:g} is looser than {TOLERANCE:g}, the bound a lossless "
            "conversion must meet (it may only be tightened); a looser tolerance applies to "
            "--quantize int8 and --prune"
        )
    return tolerance


def _source_runtime(
    registry: Registry, source: VersionInfo, quantize: str | None, prune: float | None
) -> Runtime:
    if source.flavor == "onnx" and quantize is None:
        raise InvalidInput(
            f"{source.ref} is an ONNX model already; to quantize it, add --quantize int8"
        )
    if source.flavor not in ("sklearn", "onnx", "torch"):
        raise InvalidInput(
            f"{source.ref} is a {source.flavor} model; optimize converts scikit-learn models "
            "(and XGBoost/LightGBM estimators) and torch networks, and quantizes ONNX models"
        )
    return load_version(registry, source)


def convert_source(source: VersionInfo, runtime: Runtime, *, float_only: bool) -> Converted | None:
    """The ONNX conversion of a loaded scikit-learn version; None for an ONNX version."""
    if source.flavor == "onnx":
        return None
    model = getattr(runtime, "model", None)
    if model is None:
        raise InvalidInput(f"{source.ref} holds no scikit-learn estimator to convert")
    return to_onnx(model, source.signature, float_only=float_only)


def refusal(
    source: VersionInfo,
    result: EquivalenceReport,
    rows: CheckData,
    quantize: str | None,
    *,
    action: str = "optimize",
    outcome: str = "Nothing was registered",
    otherwise: str | None = None,
    target: str = "onnx",
    by_accuracy: bool = True,
) -> str:
    """Why a conversion is refused, with the measured differences (optimize's and export's).

    `by_accuracy`: whether labelled rows would judge a lossy form by accuracy (optimize's
    rule); export's shipped test compares with the tolerance, so it always judges by that.
    """
    form = {"onnx": "ONNX", "torchscript": "TorchScript", "torch": "pruned"}[target]
    if quantize:
        what = f"the int8-quantized {form} form"
    elif target == "onnx":
        what = "the ONNX conversion"
    else:
        what = f"the {form} form"
    worst = "; ".join(row.describe() for row in result.worst[:3])
    if result.max_accuracy_drop is not None:
        advice = "raise --max-accuracy-drop if that loss is acceptable"
    elif (quantize or target == "torch") and by_accuracy:
        advice = (
            "raise --tolerance if that difference is acceptable, or check on labelled rows "
            "(--data with labels) to judge by accuracy"
        )
    elif quantize or target == "torch":
        advice = "raise --tolerance if that difference is acceptable"
    else:
        advice = otherwise or f"keep serving {source.ref}"
    return (
        f"{action} refused: {what} of {source.ref} differs from it on "
        f"{rows.rows} rows ({rows.describe()}): {'; '.join(result.failures())}"
        f"{f'; worst rows: {worst}' if worst else ''}. {outcome}; {advice}"
    )


def _lineage(
    source: VersionInfo,
    made: Made,
    quantize: str | None,
    result: EquivalenceReport,
    rows: CheckData,
    speed: SpeedReport,
    size: SizeReport,
) -> Lineage:
    detail: dict[str, Any] = {
        **made.detail,
        "quantized": quantize,
        "check": {
            "rows": result.rows,
            "data": rows.to_dict()["sources"],
            "generated_from": rows.generated_from,
            "label_agreement": result.label_agreement,
            "max_probability_diff": result.max_probability_diff,
            "max_value_diff": result.max_value_diff,
            "tolerance": result.tolerance,
            "min_agreement": MIN_AGREEMENT,
            "judged_by": result.judged_by,
            "source_accuracy": result.source_accuracy,
            "optimized_accuracy": result.optimized_accuracy,
            "max_accuracy_drop": result.max_accuracy_drop,
        },
        "speed": speed.to_dict(),
        "size": size.to_dict(),
    }
    return Lineage(source.model, source.number, _finite(detail))


def _finite(value: Any) -> Any:
    """JSON the registry can store: PostgreSQL refuses NaN and Infinity in JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _register_request(
    source: VersionInfo,
    made: Made,
    folder: Path,
    lineage: Lineage,
    alias: str | None,
    actor: str | None,
    address: str | None,
) -> RegisterRequest:
    signature = folder / "signature.json"
    signature.write_text(json.dumps(source.signature.to_dict()))
    return RegisterRequest(
        name=source.model,
        path=made.path,
        flavor=made.flavor,
        sample=_example_file(source, folder),
        signature=signature,
        tags=source.tags,
        description=f"{_describe(lineage.detail)} of {source.ref}",
        aliases=(alias,) if alias else (),
        reference_stats=source.reference_stats,
        lineage=lineage,
        actor=actor,
        address=address,
    )


def _describe(detail: Mapping[str, Any]) -> str:
    """e.g. 'int8-quantized ONNX form', 'pruned (30%) TorchScript form', 'ONNX conversion'."""
    method = detail.get("method", "onnx")
    form = {"onnx": "ONNX", "torchscript": "TorchScript", "torch": "PyTorch"}.get(method, method)
    changes = []
    if detail.get("pruned"):
        changes.append(f"pruned ({detail['pruned']['amount']:.0%})")
    if detail.get("quantized"):
        changes.append("int8-quantized")
    if not changes:
        return f"{form} conversion"
    return f"{' '.join(changes)} {form} form"


def _example_file(source: VersionInfo, folder: Path) -> Path | None:
    """The source's example rows as a sample file, so registration stores (and tries) them."""
    if not source.example:
        return None
    if source.signature.kind == "tabular":
        path = folder / "example.json"
        path.write_text(json.dumps(source.example))
        return path
    dtype = source.signature.inputs[0].dtype
    path = folder / "example.npy"
    np.save(path, np.asarray(source.example, dtype=str if dtype == "string" else dtype))
    return path
