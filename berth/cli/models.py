"""`berth models ...`: register, list, show, alias, optimize and delete versions."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import typer
from rich.table import Table

from berth.cli.context import console, registry, remote
from berth.cli.remote import path as remote_path
from berth.errors import BerthError, InvalidInput
from berth.registry.references import chosen_version, parse_reference
from berth.runtimes import FLAVORS

# The registry, the HTTP client and the drift statistics are imported by the commands that use
# them, so that `berth --help` and `berth models list` do not pay for them.
if TYPE_CHECKING:
    import httpx

    from berth.cli.remote import Remote
    from berth.optimize.service import OptimizeReport
    from berth.registry.versions import VersionInfo

app = typer.Typer(help="Register and manage model versions.", no_args_is_help=True)


@app.command("register")
def register(
    name: str = typer.Argument(..., help="Model name, e.g. churn."),
    path: Path = typer.Argument(
        ..., help="Model file, directory, or archive (.tar.gz, .tgz, .tar, .zip)."
    ),
    flavor: str | None = typer.Option(
        None, help=f"One of {', '.join(FLAVORS)}; detected if omitted."
    ),
    sample: Path | None = typer.Option(
        None, help="Sample input (.csv/.parquet/.json/.npy) to infer the signature."
    ),
    signature: Path | None = typer.Option(None, help="Signature JSON file (instead of --sample)."),
    reference: Path | None = typer.Option(
        None,
        help="Reference data (.csv/.parquet/.json/.npy, e.g. the training set): its per-feature "
        "statistics are stored for drift monitoring.",
    ),
    alias: list[str] = typer.Option([], help="Alias to point at the new version (repeatable)."),
    metric: list[str] = typer.Option([], help="Metric KEY=NUMBER (repeatable)."),
    tag: list[str] = typer.Option([], help="Tag KEY=VALUE (repeatable)."),
    description: str = typer.Option("", help="Free text."),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="Accept a pickle/joblib file. Loading a pickle runs any code it holds: only for "
        "files you trust (recorded in the audit log). Prefer skops.io.dump(model, 'model.skops').",
    ),
    trust_type: list[str] = typer.Option(
        [],
        "--trust-type",
        help="A type the skops file may load beyond scikit-learn, numpy and scipy, e.g. "
        "mypackage.MyTransformer (repeatable; recorded on the version).",
    ),
) -> None:
    """Register a file, directory or archive as the next version of a model.

    Archives (.tar.gz, .tgz, .tar, .zip) are unpacked safely and registered as a directory.
    Pickle/joblib files need --trust-pickle; skops files with types of your own need --trust-type.

    Example: berth models register churn model.skops --sample train.csv --reference train.csv --metric auc=0.91 --alias production
    """
    from berth.registration.service import RegisterRequest, parse_metrics, parse_pairs
    from berth.registration.service import register as register_version
    from berth.store.audit import cli_actor

    request = RegisterRequest(
        name=name,
        path=path,
        flavor=flavor,
        sample=sample,
        signature=signature,
        metrics=parse_metrics(metric),
        tags=parse_pairs(tag, "tag"),
        description=description,
        aliases=tuple(alias),
        trust_pickle=trust_pickle,
        trusted_types=tuple(trust_type),
        reference=reference,
        actor=cli_actor(),
    )
    with console.status(f"Checking and storing {path} ..."):
        version = register_version(registry(), request)
    aliases = ", ".join(f"@{a}" for a in version.aliases) or "none"
    console.print(
        f"Registered [bold]{version.ref}[/] ({version.flavor}, sha256 {version.artifact.sha256[:12]}, "
        f"aliases: {aliases})"
    )
    for note in version.notes:
        console.print(f"Note: {note}", highlight=False, markup=False)
    if version.reference_stats:
        features = len(version.reference_stats.get("features", {}))
        console.print(
            f"Stored drift reference statistics of {features} features "
            f"({version.reference_stats.get('rows')} rows)"
        )


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List models with their latest version and aliases.

    Example: berth models list
    """
    server = remote()
    if server is not None:
        models = server.get(remote_path("models"))["models"]
    else:
        models = [m.to_dict() for m in registry().list_models()]
    if as_json:
        typer.echo(json.dumps(models, indent=2))
        return
    if not models:
        console.print(
            "No models registered yet. Register one with `berth models register NAME "
            "model.skops --sample rows.csv`, or run `berth demo` for a ready-made one.",
            highlight=False,
            markup=False,
        )
        return
    table = Table("model", "latest", "versions", "aliases", "flavor")
    for model in models:
        latest = model["latest_version"]
        aliases = ", ".join(f"{a}→{v}" for a, v in model["aliases"].items())
        table.add_row(
            model["name"],
            "-" if latest is None else str(latest),
            str(len(model["versions"])),
            aliases,
            model["latest_flavor"] or "-",
        )
    console.print(table)


@app.command("show")
def show(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one version: flavor, sha256, signature, metrics, tags, aliases.

    Example: berth models show churn@production
    """
    server = remote()
    version = (
        _remote_version(server, reference)
        if server is not None
        else registry().resolve(reference).to_dict()
    )
    if as_json:
        typer.echo(json.dumps(version, indent=2))
        return
    _print_version(version)


def _remote_version(server: Remote, reference: str) -> dict[str, Any]:
    """The version document a reference names, resolved as the registry resolves it."""
    ref = parse_reference(reference)
    if ref.version is not None:
        document: dict[str, Any] = server.get(
            remote_path("models", ref.name, "versions", ref.version)
        )
        return document
    model = server.get(remote_path("models", ref.name))
    versions = {v["version"]: v for v in model["versions"]}
    found: dict[str, Any] = versions[chosen_version(ref, model["aliases"], list(versions))]
    return found


def _print_version(version: dict[str, Any]) -> None:
    """A version from its document (`VersionInfo.to_dict()`, which the API returns too)."""
    ref = f"{version['model']}:{version['version']}"
    created = datetime.fromisoformat(version["created_at"])
    console.print(f"[bold]{ref}[/]  flavor={version['flavor']}  created={created:%Y-%m-%d %H:%M}")
    console.print(f"sha256   {version['sha256']}  ({version['size_bytes']} bytes)")
    console.print(f"aliases  {', '.join(version['aliases']) or '-'}")
    console.print(f"metrics  {version['metrics'] or '-'}")
    console.print(f"tags     {version['tags'] or '-'}")
    trust = [*(["pickle"] if version["pickle_trusted"] else []), *version["trusted_types"]]
    if trust:
        console.print(f"trusts   {', '.join(trust)}")
    if version["description"]:
        console.print(f"about    {version['description']}")
    if version["lineage"] is not None:
        console.print(f"lineage  {_lineage_line(version['lineage'])}", highlight=False)
    table = Table("input", "dtype", "shape / nullable", "range")
    signature = version["signature"]
    for column in signature.get("columns", []):
        minimum, maximum = column.get("minimum"), column.get("maximum")
        bounds = "" if minimum is None and maximum is None else f"[{minimum}, {maximum}]"
        table.add_row(
            column["name"],
            column["dtype"],
            "nullable" if column["nullable"] else "required",
            bounds,
        )
    for tensor in signature.get("inputs", []):
        table.add_row(tensor["name"], tensor["dtype"], str(list(tensor["shape"])), "")
    console.print(table)


def _lineage_line(detail: dict[str, Any]) -> str:
    """`detail` is the version document's lineage: its source and how it was derived."""
    how = ", ".join(
        str(detail[key]) for key in ("method", "precision", "quantized") if detail.get(key)
    )
    line = f"derived from {detail['source']}" + (f" ({how})" if how else "")
    check = detail.get("check")
    if isinstance(check, dict) and check.get("rows"):
        line += f"; checked on {check['rows']} rows"
        if check.get("label_agreement") is not None:
            line += f", labels identical on {_percent(check['label_agreement'], 3)}"
        if check.get("max_probability_diff") is not None:
            line += f", max probability difference {_number(check['max_probability_diff'])}"
        if check.get("max_value_diff") is not None:
            line += f", max relative difference {_number(check['max_value_diff'])}"
    return line


@app.command("optimize")
def optimize_command(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    data: Path | None = typer.Option(
        None,
        help="Rows to check equivalence on (.csv/.parquet with the signature's columns, .npy for "
        "tensor models); default: the version's example rows topped up with generated rows.",
    ),
    quantize: str | None = typer.Option(
        None, help="int8: also quantize weights to int8 (dynamic), checked with --tolerance."
    ),
    tolerance: float | None = typer.Option(
        None,
        help="Largest probability (or relative value) difference accepted: 1e-4 for a plain "
        "conversion (may only be tightened), 1e-2 by default with --quantize int8.",
    ),
    alias: str | None = typer.Option(
        None, help="Alias to point at the new version; without it no alias moves."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Convert a version to ONNX, check it predicts the same, and register it as a new version.

    Labels must be identical on at least 99.9% of the check rows and probabilities within the
    tolerance; otherwise nothing is registered and the measured differences are shown. The new
    version keeps the signature, so clients send the same requests; `models show` shows its
    source.

    Example: berth models optimize churn:3 --data holdout.csv --alias staging
    """
    # Imported here: the converters (skl2onnx, onnx) cost a second to import, and every other
    # command (and `berth serve`) would pay it.
    from berth.optimize.service import optimize
    from berth.store.audit import cli_actor

    with console.status(f"Optimizing {reference} ...") as status:
        report = optimize(
            registry(),
            reference,
            data=data,
            quantize=quantize,
            tolerance=tolerance,
            alias=alias,
            actor=cli_actor(),
            progress=lambda step: status.update(f"Optimizing {reference}: {step} ..."),
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print_optimized(report)


def _print_optimized(report: OptimizeReport) -> None:
    version, check = report.version, report.check
    how = ", ".join(p for p in ("onnx", report.precision, report.quantized) if p)
    table = Table("measure", "value", title=f"{report.source.ref} optimized")
    table.add_row(
        "new version", f"{version.ref} ({how}) from {report.source.ref} ({report.source.flavor})"
    )
    table.add_row("rows checked", f"{check.rows} ({report.data.describe()})")
    if check.label_agreement is not None:
        table.add_row(
            "label agreement",
            f"{check.agreeing}/{check.rows} ({_percent(check.label_agreement, 3)}; "
            f"required {_percent(check.min_agreement)})"
            + (f", {check.ties} of them ties broken the other way" if check.ties else ""),
        )
    for what, value in (
        ("max probability difference", check.max_probability_diff),
        ("max relative difference", check.max_value_diff),
    ):
        if value is not None:
            table.add_row(what, f"{_number(value)} (tolerance {check.tolerance:g})")
    for timing in report.speed.timings:
        table.add_row(
            f"ms per call, batch {timing.batch}",
            f"{timing.source_ms:.3f} → {timing.optimized_ms:.3f} ({timing.speedup:.1f}x speedup)",
        )
    console.print(table)
    aliases = ", ".join(f"@{a}" for a in version.aliases)
    serve = f"serve it with `berth models alias {version.model} production {version.number}`"
    moved = f"aliases: {aliases}" if aliases else f"no alias moved; {serve}"
    console.print(
        f"Registered [bold]{version.ref}[/] (onnx, sha256 {version.artifact.sha256[:12]}; {moved})"
    )


@app.command("alias")
def alias(
    name: str = typer.Argument(..., help="Model name."),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="Alias, e.g. production."),
    version: int | None = typer.Argument(None, help="Version number to point at."),
    remove: bool = typer.Option(False, "--remove", help="Remove the alias instead."),
) -> None:
    """Point an alias at a version (atomically), or remove it.

    Example: berth models alias churn production 3
    """
    from berth.cli.flags import from_flags
    from berth.registry.requests import AliasRequest
    from berth.store.audit import cli_actor

    if remove:
        registry().remove_alias(name, alias_name, actor=cli_actor())
        console.print(f"Removed {name}@{alias_name}")
        return
    if version is None:
        raise InvalidInput(
            "give the version to point at, e.g. `berth models alias churn production 3`"
        )
    asked = from_flags(AliasRequest, {"version": "VERSION"}, {"version": version})
    registry().set_alias(name, alias_name, asked.version, actor=cli_actor())
    console.print(f"{name}@{alias_name} → {name}:{version}")


@app.command("delete")
def delete(
    reference: str = typer.Argument(
        ..., help="NAME:VERSION to delete one version, NAME for the model."
    ),
    yes: bool = typer.Option(False, "--yes", help="Confirm deleting a whole model."),
) -> None:
    """Delete a version (refused while an alias points at it) or a whole model.

    Example: berth models delete churn:2
    """
    from berth.store.audit import cli_actor

    ref = parse_reference(reference)
    if ref.alias is not None:
        raise InvalidInput("delete takes NAME:VERSION or NAME, not an alias")
    if ref.version is not None:
        registry().delete_version(ref.name, ref.version, actor=cli_actor())
        console.print(f"Deleted {ref}")
        return
    if not yes:
        raise InvalidInput(
            f"deleting model '{ref.name}' removes every version; add --yes to confirm"
        )
    registry().delete_model(ref.name, actor=cli_actor())
    console.print(f"Deleted model {ref.name}")


_VERDICT_STYLE = {
    "stable": "green",
    "moderate": "yellow",
    "drifted": "bold red",
    "no_data": "dim",
}


@app.command("drift")
def drift(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    url: str | None = typer.Option(
        None, help="A running server to ask for live drift, e.g. http://127.0.0.1:8321."
    ),
    key: str | None = typer.Option(
        None, envvar="BERTH_API_KEY", help="API key with the read scope (or BERTH_API_KEY)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Feature drift of live inputs against the version's reference data (PSI, KS).

    Live inputs are kept by the server, so give --url (and --key); without it the stored
    reference statistics are shown.

    Example: berth models drift churn --url http://127.0.0.1:8321 --key berth_...
    """
    from berth.monitoring.drift import verdict

    if url is None:
        _print_reference(registry().resolve(reference), as_json)
        return
    report = _fetch_drift(url, reference, key)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    window = report.get("window", {})
    overall = report.get("verdict", "no_data")
    console.print(
        f"[bold]{report['model']}:{report['version']}[/]  live rows {window.get('rows', 0)}"
        f"/{window.get('capacity', '?')}  verdict [{_VERDICT_STYLE.get(overall, '')}]{overall}[/]"
    )
    table = Table("feature", "kind", "PSI", "KS", "KS p-value", "live rows", "verdict")
    for feature in report.get("features", []):
        shown = feature.get("verdict") or verdict(feature.get("psi"))
        table.add_row(
            feature["feature"],
            feature.get("kind", ""),
            _number(feature.get("psi")),
            _number(feature.get("ks_statistic")),
            _number(feature.get("ks_pvalue")),
            str(feature.get("live_count", 0)),
            f"[{_VERDICT_STYLE.get(shown, '')}]{shown}[/]",
        )
    console.print(table)
    thresholds = report.get("thresholds", {})
    console.print(
        f"PSI < {thresholds.get('moderate', 0.1)} stable, "
        f"< {thresholds.get('drifted', 0.25)} moderate, else drifted",
        style="dim",
    )


def _print_reference(version: VersionInfo, as_json: bool) -> None:
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
                _percent(feature.get("missing")),
                *(_number(feature.get(k)) for k in ("mean", "std", "min", "max")),
                "",
            )
        else:
            frequencies = feature.get("frequencies", {})
            top = ", ".join(f"{k} {_percent(v)}" for k, v in list(frequencies.items())[:4])
            table.add_row(
                name,
                "categorical",
                str(feature.get("count")),
                _percent(feature.get("missing")),
                "",
                "",
                "",
                "",
                top,
            )
    console.print(table)
    console.print(
        "Live drift is measured by the server that serves the model: "
        f"`berth models drift {version.ref} --url http://HOST:PORT --key KEY`"
    )


def _http_client(url: str) -> httpx.Client:
    import httpx

    return httpx.Client(base_url=url.rstrip("/"), timeout=30.0)


def _fetch_drift(url: str, reference: str, key: str | None) -> dict[str, Any]:
    import httpx

    parse_reference(reference)  # a bad reference fails here, with the usual message
    headers = {"X-API-Key": key} if key else {}
    client = _http_client(url)
    try:
        response = client.get(f"/api/v1/models/{quote(reference, safe='')}/drift", headers=headers)
    except httpx.HTTPError as exc:
        raise InvalidInput(
            f"could not reach {url}: {exc}; is the server running (`berth serve`)?"
        ) from exc
    finally:
        client.close()
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        message = body.get("error") if isinstance(body, dict) else None
        raise BerthError(f"{url} answered {response.status_code}: {message or response.text[:200]}")
    return body


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _percent(value: Any, decimals: int = 1) -> str:
    return "-" if value is None else f"{100 * float(value):.{decimals}f}%"
