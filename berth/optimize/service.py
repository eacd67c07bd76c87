"""`optimize`: convert a version to ONNX, prove it equivalent, and register it with its lineage.

The CLI (`berth models optimize`) and any admin API call this one function. Steps: load the
source version as it is served; gather the check rows; convert (scikit-learn, XGBoost and
LightGBM models) or take the ONNX graph of an ONNX version; optionally quantize to int8; run
both on the check rows; refuse with the measured differences when they differ, else measure
the speed of both and register the graph (`berth.registration`: content-addressed,
loaded and smoke-tested like any version) as the next version of the same model, with the
source's signature, example rows, tags and drift reference, linked to its source. No alias
moves unless one is asked for.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from berth.errors import InvalidInput
from berth.optimize.convert import Converted, to_onnx
from berth.optimize.data import CheckData, check_data
from berth.optimize.equivalence import (
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

QUANTIZED_TOLERANCE = 1e-2
"""The default probability tolerance of an int8-quantized graph (--tolerance changes it)."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class OptimizeReport:
    source: VersionInfo
    version: VersionInfo
    """The registered optimized version."""
    check: EquivalenceReport
    data: CheckData
    speed: SpeedReport
    precision: str | None
    """Numeric input type of a converted graph ('double' or 'float'); None for an ONNX source."""
    quantized: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.ref,
            "source_flavor": self.source.flavor,
            "version": self.version.to_dict(),
            "check": {**self.check.to_dict(), "data": self.data.to_dict()},
            "speed": self.speed.to_dict(),
            "precision": self.precision,
            "quantized": self.quantized,
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
) -> OptimizeReport:
    """Register an equivalent ONNX form of `reference` as a new version, or refuse and say why.

    `tolerance` bounds probability (or relative value) differences: at most 1e-4 for a plain
    conversion (it may be tightened), `QUANTIZED_TOLERANCE` by default for int8.
    """
    step = progress or _silent
    limit = check_tolerance(tolerance, quantize)
    if alias is not None:
        check_name("alias", alias)
    source = registry.resolve(reference)
    step(f"loading {source.ref}")
    source_runtime = _source_runtime(registry, source, quantize)
    step("preparing the check rows")
    rows = check_data(source, data)
    step("converting to ONNX" if source.flavor != "onnx" else "reading the ONNX graph")
    converted = convert_source(source, source_runtime, float_only=quantize is not None)
    graph = converted.onnx_bytes if converted else artifact_path(registry, source).read_bytes()
    if quantize is not None:
        step("quantizing to int8")
        graph = quantize_int8(graph)
    with tempfile.TemporaryDirectory(prefix="berth-optimize-") as folder:
        path = Path(folder) / f"{source.model}.onnx"
        path.write_bytes(graph)
        optimized = load_runtime("onnx", path)
        step(f"checking equivalence on {rows.rows} rows")
        result = check(source_runtime, optimized, rows, tolerance=limit)
        if not result.passed:
            raise NotEquivalent(refusal(source, result, rows, quantize), result)
        step("measuring speed")
        speed = compare(source_runtime, optimized, rows)
        step("registering")
        precision = converted.precision if converted else None
        lineage = _lineage(source, converted, quantize, result, rows, speed)
        request = _register_request(source, path, Path(folder), lineage, alias, actor, address)
        version = register(registry, request)
    return OptimizeReport(source, version, result, rows, speed, precision, quantize)


def _silent(_: str) -> None:
    return None


def check_tolerance(tolerance: float | None, quantize: str | None) -> float:
    """The tolerance in effect for a conversion (optionally quantized); shared with export."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InvalidInput(
            f"unknown quantization '{quantize}'; use one of {', '.join(QUANTIZATIONS)}"
        )
    if tolerance is None:
        return QUANTIZED_TOLERANCE if quantize else TOLERANCE
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InvalidInput(f"--tolerance must be a number of at least 0, got {tolerance}")
    if quantize is None and tolerance > TOLERANCE:
        raise InvalidInput(
            f"--tolerance {tolerance:g} is looser than {TOLERANCE:g}, the bound a plain ONNX "
            "conversion must meet (it may only be tightened); a looser tolerance applies to "
            "--quantize int8"
        )
    return tolerance


def _source_runtime(registry: Registry, source: VersionInfo, quantize: str | None) -> Runtime:
    if source.flavor == "onnx" and quantize is None:
        raise InvalidInput(
            f"{source.ref} is an ONNX model already; to quantize it, add --quantize int8"
        )
    if source.flavor not in ("sklearn", "onnx"):
        raise InvalidInput(
            f"{source.ref} is a {source.flavor} model; optimize converts scikit-learn models "
            "(and XGBoost/LightGBM estimators) to ONNX, and quantizes ONNX models"
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
) -> str:
    """Why a conversion is refused, with the measured differences (optimize's and export's)."""
    what = "the int8-quantized ONNX form" if quantize else "the ONNX conversion"
    worst = "; ".join(row.describe() for row in result.worst[:3])
    advice = (
        f"raise --tolerance if that difference is acceptable, or {action} without --quantize"
        if quantize
        else otherwise or f"keep serving {source.ref}"
    )
    return (
        f"{action} refused: {what} of {source.ref} differs from it on "
        f"{rows.rows} rows ({rows.describe()}): {'; '.join(result.failures())}"
        f"{f'; worst rows: {worst}' if worst else ''}. {outcome}; {advice}"
    )


def _lineage(
    source: VersionInfo,
    converted: Converted | None,
    quantize: str | None,
    result: EquivalenceReport,
    rows: CheckData,
    speed: SpeedReport,
) -> Lineage:
    detail: dict[str, Any] = {
        "method": "onnx",
        "converter": converted.converter if converted else None,
        "precision": converted.precision if converted else None,
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
        },
        "speed": speed.to_dict(),
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
    graph: Path,
    folder: Path,
    lineage: Lineage,
    alias: str | None,
    actor: str | None,
    address: str | None,
) -> RegisterRequest:
    signature = folder / "signature.json"
    signature.write_text(json.dumps(source.signature.to_dict()))
    what = "int8-quantized ONNX form" if lineage.detail.get("quantized") else "ONNX conversion"
    return RegisterRequest(
        name=source.model,
        path=graph,
        flavor="onnx",
        sample=_example_file(source, folder),
        signature=signature,
        tags=source.tags,
        description=f"{what} of {source.ref}",
        aliases=(alias,) if alias else (),
        reference_stats=source.reference_stats,
        lineage=lineage,
        actor=actor,
        address=address,
    )


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
