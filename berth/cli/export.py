"""`berth export`: a version (scikit-learn, booster, torch or ONNX) as a self-contained folder
for edge devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from berth.cli.context import console, registry, remote, settings

if TYPE_CHECKING:
    from berth.deploy.edge import EdgeExport
    from berth.deploy.source import BuildSource


def export(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    format: str = typer.Option(..., "--format", help="Export format; only onnx exists."),
    out: Path = typer.Option(..., "--out", help="Directory to write; created if missing."),
    quantize: str | None = typer.Option(
        None, help="int8: also quantize weights to int8 (dynamic), checked with --tolerance."
    ),
    tolerance: float | None = typer.Option(
        None,
        help="Largest probability (or relative value, e.g. a network's outputs) difference "
        "accepted: 1e-4 for a plain conversion (may only be tightened), 1e-2 by default with "
        "--quantize int8. The folder's own test compares with it too.",
    ),
    data: Path | None = typer.Option(
        None,
        help="Rows to check the graph on (.csv/.parquet with the signature's columns, .npy for "
        "tensor models); default: the version's example rows topped up with generated rows.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Write into a non-empty --out, overwriting the export's files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write a version as a folder that runs with onnxruntime and numpy only.

    The folder holds model.onnx, signature.json, run.py (`python run.py rows.json`),
    requirements.txt, sample.json, expected.json (Berth's own answers for the sample) and
    test_run.py (`python -m unittest`: run.py's answers equal Berth's). scikit-learn, XGBoost
    and LightGBM versions are converted, and torch versions (an nn.Module with its state_dict,
    or TorchScript) exported with torch.onnx (opset 17), as `berth models optimize --to onnx`
    makes them; the graph is checked like an optimized form (labels identical on 99.9% of the
    check rows, probabilities or a network's outputs within the tolerance) before anything is
    written. ONNX versions are exported as they are; python-flavor versions cannot be.

    In remote mode the version's record and artifact come through the server's admin API (the
    key needs the admin scope); the artifact is downloaded into a private temporary folder,
    checked against its sha256, and the same folder is written here.

    Example: berth export churn@production --format onnx --out churn-edge
    """
    # Imported here: the converters (skl2onnx, onnx; torch for a torch version) cost a second
    # to import.
    from berth.deploy.edge import prepare, write_export
    from berth.deploy.source import local_artifact

    source, trusted_types = _source()
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
    # The download (remote mode) shows its own progress bar, before the status line.
    with (
        local_artifact(source, plan.version) as artifact,
        console.status(f"Exporting {reference} ...") as status,
    ):
        report = write_export(
            plan,
            artifact,
            trusted_types=trusted_types,
            progress=lambda step: status.update(f"Exporting {reference}: {step} ..."),
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print_export(report)


def _source() -> tuple[BuildSource, tuple[str, ...]]:
    """Where the version comes from, and the types trusted beside the version's own
    (BERTH_TRUSTED_TYPES: the registry's in local mode, this process's in remote mode, where
    the server's own setting is not known)."""
    server = remote()
    if server is not None:
        from berth.cli.remote_build import RemoteSource
        from berth.registry.service import check_type_names

        trusted = check_type_names(settings().trusted_types, "BERTH_TRUSTED_TYPES")
        return RemoteSource(server), trusted
    from berth.deploy.source import RegistrySource

    return RegistrySource(registry()), registry().trusted_types


def _print_export(report: EdgeExport) -> None:
    from berth.deploy.edge import figures

    check = report.check
    table = Table("measure", "value", title=f"{report.source.ref} exported")
    table.add_row("graph", report.how)
    table.add_row("rows checked", f"{check.rows} ({report.data.describe()})")
    if check.label_agreement is not None:
        table.add_row(
            "label agreement",
            f"{check.agreeing}/{check.rows} ({check.label_agreement:.3%}; required "
            f"{check.min_agreement:.1%})"
            + (f", {check.ties} of them ties broken the other way" if check.ties else ""),
        )
    for what, value in (
        ("max probability difference", check.max_probability_diff),
        ("max relative difference", check.max_value_diff),
    ):
        if value is not None:
            table.add_row(what, f"{value:.3g} (tolerance {check.tolerance:g})")
    table.add_row("sample", figures(check, report.data, report.sample)[-1])
    console.print(table)
    console.print(
        f"Wrote [bold]{report.folder}[/] ({', '.join(report.files)}); its own test passed. "
        f"Try: cd {report.folder} && python run.py sample.json"
    )
