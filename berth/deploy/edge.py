"""`export_edge`: a version as a self-contained folder that runs with onnxruntime and numpy only.

The CLI (`berth export REF --format onnx --out DIR`) calls `prepare`, then `write_export` on a
local copy of the version's artifact (`export_edge` does both). The version and its artifact
come from a `BuildSource`: the registry, or in remote mode a server's admin API (the record,
and the artifact downloaded and checked against its sha256), so both modes write the same
folder. Steps: refuse early what cannot work (an unknown format, a non-empty DIR without
--force, a python version); load the version as it is served; take its ONNX graph (an ONNX
version's own bytes) or make it as `berth models optimize` does (scikit-learn and boosters with
`convert_source`, torch networks with `torch_graph`), optionally quantize it to int8; check the
graph against the served version on the check rows (the optimize rules and tolerances: refused
with the measured differences otherwise);
pick sample rows and give them Berth's own answers; write the folder to a staging directory,
run its own test there, and only then copy it into DIR.

Modules: `edge_sample` (sample rows and Berth's answers), `edge_folder` (the files, the self
test, installing), `edge_runner` (the runner, copied as run.py), `edge_selftest` (its test,
copied as test_run.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.deploy import edge_folder
from berth.deploy.edge_sample import Sample, sample
from berth.deploy.source import BuildSource, local_artifact, model_version
from berth.errors import InvalidInput
from berth.optimize.convert import Converted
from berth.optimize.data import CheckData, check_data
from berth.optimize.equivalence import EquivalenceReport, NotEquivalent, check
from berth.optimize.service import (
    TorchGraph,
    check_tolerance,
    onnx_graph,
    refusal,
    torch_graph,
)
from berth.registry.versions import VersionInfo
from berth.runtimes import load_runtime
from berth.runtimes.base import Runtime
from berth.runtimes.loading import entry_path, load_fetched

FORMATS = ("onnx",)

Progress = Callable[[str], None]

_NOT_CONVERTIBLE = {
    "python": (
        "a python-flavor version runs your own class, which cannot be converted to ONNX. "
        "Register an ONNX form of the model (`berth models register NAME model.onnx`) and "
        "export that version"
    ),
}


@dataclass(frozen=True)
class EdgeExport:
    source: VersionInfo
    folder: Path
    files: tuple[str, ...]
    check: EquivalenceReport
    data: CheckData
    sample: Sample
    converted: Converted | None
    """How a scikit-learn (or booster) model was converted; None for other flavors."""
    quantized: str | None
    from_torch: TorchGraph | None = None
    """How a torch network was exported (exporter, opset); None for other flavors."""

    @property
    def how(self) -> str:
        return _how(self.source, self.converted, self.from_torch, self.quantized)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.ref,
            "folder": str(self.folder),
            "files": list(self.files),
            "format": "onnx",
            "how": self.how,
            "precision": self.converted.precision if self.converted else None,
            "exporter": self.from_torch.exporter if self.from_torch else None,
            "opset": self.from_torch.opset if self.from_torch else None,
            "quantized": self.quantized,
            "check": {**self.check.to_dict(), "data": self.data.to_dict()},
            "sample_rows": len(self.sample.instances),
            "sample_left_out": self.sample.left_out,
        }


@dataclass(frozen=True)
class EdgePlan:
    """An export checked before any artifact byte is read: what `prepare` found."""

    version: VersionInfo
    target: Path
    """The folder to write (`--out`), checked empty or forced."""
    tolerance: float
    quantize: str | None
    data: Path | None


def prepare(
    source: BuildSource,
    reference: str,
    out: Path,
    *,
    format: str = "onnx",
    quantize: str | None = None,
    tolerance: float | None = None,
    data: Path | None = None,
    force: bool = False,
) -> EdgePlan:
    """Refuse early what cannot work (nothing read or written yet), and find the version.

    `tolerance`: as for `berth models optimize` (1e-4 for a conversion, may only be tightened;
    1e-2 by default with int8); it also bounds the shipped test's probability comparison.
    """
    if format not in FORMATS:
        raise InvalidInput(f"unknown export format '{format}'; use one of {', '.join(FORMATS)}")
    limit = check_tolerance(tolerance, quantize)
    target = edge_folder.check_target(out, force)
    version = model_version(source, reference)
    if version.flavor in _NOT_CONVERTIBLE:
        raise InvalidInput(f"{version.ref} cannot be exported: {_NOT_CONVERTIBLE[version.flavor]}")
    return EdgePlan(version, target, limit, quantize, data)


def export_edge(
    source: BuildSource,
    reference: str,
    out: Path,
    *,
    format: str = "onnx",
    quantize: str | None = None,
    tolerance: float | None = None,
    data: Path | None = None,
    force: bool = False,
    trusted_types: Sequence[str] = (),
    progress: Progress | None = None,
) -> EdgeExport:
    """Write `reference` as an ONNX folder in `out`, or refuse and say why (nothing written):
    `prepare`, the artifact fetched from `source`, then `write_export`."""
    plan = prepare(
        source,
        reference,
        out,
        format=format,
        quantize=quantize,
        tolerance=tolerance,
        data=data,
        force=force,
    )
    with local_artifact(source, plan.version) as artifact:
        return write_export(plan, artifact, trusted_types=trusted_types, progress=progress)


def write_export(
    plan: EdgePlan,
    artifact: Path,
    *,
    trusted_types: Sequence[str] = (),
    progress: Progress | None = None,
) -> EdgeExport:
    """Convert, check and write the planned export from `artifact`, a local copy of the
    version's artifact checked against its sha256 (the registry's cache, or a download).

    `trusted_types`: types trusted beside the allow-list and the version's own when a skops
    file is loaded (BERTH_TRUSTED_TYPES).
    """
    step = progress or _silent
    source, limit, quantize = plan.version, plan.tolerance, plan.quantize
    step(f"loading {source.ref}")
    served = load_fetched(source, artifact, trusted_types)
    step("preparing the check rows")
    rows = check_data(source, plan.data)
    made = _graph(source, served, artifact, rows, quantize, step)
    graph, converted, from_torch = made.graph, made.converted, made.from_torch
    with tempfile.TemporaryDirectory(prefix="berth-export-") as staging:
        staged = Path(staging)
        (staged / edge_folder.MODEL).write_bytes(graph)
        exported = load_runtime("onnx", staged / edge_folder.MODEL)
        step(f"checking equivalence on {rows.rows} rows")
        result = check(served, exported, rows, tolerance=limit)
        if not result.passed:
            message = refusal(
                source,
                result,
                rows,
                quantize,
                action="export",
                outcome="Nothing was written",
                otherwise=f"serve {source.ref} with Berth instead",
                by_accuracy=False,
            )
            raise NotEquivalent(message, result)
        step("asking Berth for the sample rows' answers")
        picked = sample(source, served, exported, rows)
        how = _how(source, converted, from_torch, quantize)
        contents = edge_folder.Contents(
            source,
            graph,
            picked,
            limit,
            how,
            figures(result, rows, picked),
            _why_different(source, converted, from_torch, quantize),
        )
        edge_folder.write(staged, contents)
        step("running the folder's own test")
        edge_folder.self_test(staged)
        edge_folder.install(staged, plan.target)
    return EdgeExport(
        source,
        plan.target,
        edge_folder.FILES,
        result,
        rows,
        picked,
        converted,
        quantize,
        from_torch,
    )


@dataclass(frozen=True)
class _Graph:
    graph: bytes
    converted: Converted | None = None
    from_torch: TorchGraph | None = None


def _graph(
    source: VersionInfo,
    served: Runtime,
    artifact: Path,
    rows: CheckData,
    quantize: str | None,
    step: Progress,
) -> _Graph:
    """The ONNX graph to export, made as `berth models optimize` makes it (quantized if asked)."""
    if source.flavor == "torch":
        advice = (
            f"nothing was written; serve {source.ref} with Berth instead, or change the "
            "forward() code the exporter refuses"
        )
        made = torch_graph(source, served, rows, quantize=quantize, progress=step, advice=advice)
        return _Graph(made.onnx_bytes, from_torch=made)
    graph, converted = onnx_graph(
        source, served, lambda: entry_path(source, artifact).read_bytes(), quantize, step
    )
    return _Graph(graph, converted)


def figures(result: EquivalenceReport, rows: CheckData, picked: Sample) -> tuple[str, ...]:
    """The equivalence figures, one line each (README and CLI)."""
    lines = [f"checked on {rows.rows} rows ({rows.describe()}): {result.summary()}"]
    sampled = f"{len(picked.instances)} sample rows with Berth's answers"
    if picked.left_out:
        sampled += (
            f"; {picked.left_out} check rows the graph labels differently (ties) left out of "
            "the sample"
        )
    lines.append(sampled)
    return tuple(lines)


def _how(
    source: VersionInfo,
    converted: Converted | None,
    from_torch: TorchGraph | None,
    quantized: str | None,
) -> str:
    if converted:
        made = f"converted from {source.flavor} ({converted.precision}, {converted.converter})"
    elif from_torch:
        made = f"exported from {source.flavor} ({from_torch.exporter}, opset {from_torch.opset})"
    else:
        made = "the registered ONNX graph"
    return f"{made}, {quantized}-quantized" if quantized else made


def _why_different(
    source: VersionInfo,
    converted: Converted | None,
    from_torch: TorchGraph | None,
    quantized: str | None,
) -> str:
    """Why the graph's numbers may differ from the served version's at all."""
    if quantized:
        return f"the graph's weights are quantized to {quantized}"
    if converted:
        bits = "float32" if converted.precision == "float" else "float64"
        return f"the graph computes in {bits}, the {source.flavor} model in its own precision"
    if from_torch:
        return (
            "onnxruntime's kernels compute the network's layers, which may round their sums "
            "differently from torch's"
        )
    return "Berth serves this same graph; only onnxruntime's threading may move the last digits"


def _silent(_: str) -> None:
    return None
