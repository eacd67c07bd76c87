"""What `berth models optimize` and `berth models drift` print, from the documents the API
returns (and local mode builds with the same `to_dict`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from berth.cli.context import console
from berth.errors import InvalidInput

if TYPE_CHECKING:
    from berth.registry.versions import VersionInfo

VERDICT_STYLE = {
    "stable": "green",
    "moderate": "yellow",
    "drifted": "bold red",
    "no_data": "dim",
}


def accelerated_line(model: str, twin: dict[str, Any]) -> str:
    """One line on a version's accelerated twin (`Accelerated.to_dict`): served, or why not."""
    if not twin.get("served"):
        return f"No accelerated twin: {twin.get('reason', 'none was made')}; serves as registered."
    check = twin.get("check") or {}
    opt_out = json.dumps({model: {"accelerate": False}})
    difference = check.get("max_probability_diff") or check.get("max_value_diff") or 0.0
    return (
        f"Accelerated: serves as its ONNX twin ({twin.get('converter')}), checked on "
        f"{check.get('rows')} rows: labels identical, largest difference {difference:.1e} "
        f"(tolerance {check.get('tolerance', 0):g}). Opt out per model with "
        f"BERTH_MODELS='{opt_out}' on the server."
    )


def print_optimized(report: dict[str, Any]) -> None:
    """The table of `OptimizeReport.to_dict()`, which the optimize route returns too."""
    version, check, source = report["version"], report["check"], report["source"]
    ref = f"{version['model']}:{version['version']}"
    target = report.get("target", "onnx")
    pruned = report.get("pruned")
    how = ", ".join(
        p
        for p in (
            target,
            report["precision"],
            report["quantized"],
            f"pruned {pruned['amount']:.0%}" if pruned else None,
        )
        if p
    )
    table = Table("measure", "value", title=f"{source} optimized")
    table.add_row("new version", f"{ref} ({how}) from {source} ({report['source_flavor']})")
    table.add_row("rows checked", f"{check['rows']} ({check['data']['description']})")
    if check["label_agreement"] is not None:
        table.add_row(
            "label agreement",
            f"{check['agreeing']}/{check['rows']} ({percent(check['label_agreement'], 3)}; "
            f"required {percent(check['min_agreement'])})"
            + (f", {check['ties']} of them ties broken the other way" if check["ties"] else ""),
        )
    for what, key in (
        ("max probability difference", "max_probability_diff"),
        ("max relative difference", "max_value_diff"),
    ):
        if check[key] is not None:
            table.add_row(what, f"{number(check[key])} (tolerance {check['tolerance']:g})")
    if check.get("source_accuracy") is not None:
        rule = (
            f"allowed drop {percent(check['max_accuracy_drop'])}"
            if check.get("max_accuracy_drop") is not None
            else "not judged: a lossless form is held to the tolerance"
        )
        table.add_row(
            "accuracy on the labels",
            f"{percent(check['source_accuracy'])} → {percent(check['optimized_accuracy'])} "
            f"({rule})",
        )
    if pruned:
        table.add_row(
            "pruned weights",
            f"{percent(pruned['sparsity'])} zero in {pruned['layers']} Linear/Conv layers",
        )
    size = report.get("size")
    if size:
        table.add_row(
            "size",
            f"{size_text(size['source_bytes'])} → {size_text(size['optimized_bytes'])}",
        )
    for timing in report["speed"]:
        table.add_row(
            f"ms per call, batch {timing['batch']}",
            f"{timing['source_ms']:.3f} → {timing['optimized_ms']:.3f} "
            f"({number(timing['speedup'], '.1f')}x speedup)",
        )
    console.print(table)
    aliases = ", ".join(f"@{a}" for a in version["aliases"])
    serve = f"serve it with `berth models alias {version['model']} production {version['version']}`"
    moved = f"aliases: {aliases}" if aliases else f"no alias moved; {serve}"
    console.print(
        f"Registered [bold]{ref}[/] ({version['flavor']}, sha256 {version['sha256'][:12]}; {moved})"
    )


def print_live_drift(report: dict[str, Any]) -> None:
    """The drift route's report (`GET /api/v1/models/{ref}/drift`)."""
    from berth.monitoring.drift import verdict

    window = report.get("window", {})
    overall = report.get("verdict", "no_data")
    console.print(
        f"[bold]{report['model']}:{report['version']}[/]  live rows {window.get('rows', 0)}"
        f"/{window.get('capacity', '?')}  verdict [{VERDICT_STYLE.get(overall, '')}]{overall}[/]"
    )
    table = Table("feature", "kind", "PSI", "KS", "KS p-value", "live rows", "verdict")
    for feature in report.get("features", []):
        shown = feature.get("verdict") or verdict(feature.get("psi"))
        table.add_row(
            feature["feature"],
            feature.get("kind", ""),
            number(feature.get("psi")),
            number(feature.get("ks_statistic")),
            number(feature.get("ks_pvalue")),
            str(feature.get("live_count", 0)),
            f"[{VERDICT_STYLE.get(shown, '')}]{shown}[/]",
        )
    console.print(table)
    thresholds = report.get("thresholds", {})
    console.print(
        f"PSI < {thresholds.get('moderate', 0.1)} stable, "
        f"< {thresholds.get('drifted', 0.25)} moderate, else drifted",
        style="dim",
    )


def print_reference(version: VersionInfo, as_json: bool) -> None:
    stats = version.reference_stats
    if not stats:
        raise InvalidInput(
            f"{version.ref} has no reference statistics; register a version with "
            f"`berth models register {version.model} MODEL --reference DATA.csv`"
        )
    if as_json:
        typer.echo(json.dumps(version.to_dict()["reference"], indent=2))
        return
    console.print(f"[bold]{version.ref}[/]  reference statistics of {stats.get('rows')} rows")
    table = Table("feature", "kind", "count", "missing", "mean", "std", "min", "max", "top values")
    for name, feature in stats.get("features", {}).items():
        if feature.get("type") == "numeric":
            table.add_row(
                name,
                "numeric",
                str(feature.get("count")),
                percent(feature.get("missing")),
                *(number(feature.get(k)) for k in ("mean", "std", "min", "max")),
                "",
            )
        else:
            frequencies = feature.get("frequencies", {})
            top = ", ".join(f"{k} {percent(v)}" for k, v in list(frequencies.items())[:4])
            table.add_row(
                name,
                "categorical",
                str(feature.get("count")),
                percent(feature.get("missing")),
                "",
                "",
                "",
                "",
                top,
            )
    console.print(table)
    console.print(
        "Live drift is measured by the server that serves the model: "
        f"`berth models drift {version.ref} --url http://HOST:PORT --key KEY`, or the same "
        "command in remote mode (`berth login`)"
    )


def number(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def percent(value: Any, decimals: int = 1) -> str:
    return "-" if value is None else f"{100 * float(value):.{decimals}f}%"


def size_text(size: int) -> str:
    """Bytes as people read them: 812 B, 41.3 KiB, 2.07 MiB."""
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.3g} KiB"
    return f"{size / 1024**2:.3g} MiB"
