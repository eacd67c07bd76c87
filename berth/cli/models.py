"""`berth models ...`: register, list, show, alias, optimize and delete versions."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from berth.cli.context import console, registry, remote
from berth.cli.model_reports import (
    accelerated_line,
    number,
    percent,
    print_live_drift,
    print_optimized,
    print_reference,
)
from berth.cli.remote import path as remote_path
from berth.errors import InvalidInput
from berth.registry.references import parse_reference
from berth.runtimes import FLAVORS

# The registry, the uploads and the drift statistics are imported by the commands that use
# them, so that `berth --help` and `berth models list` do not pay for them.
if TYPE_CHECKING:
    from berth.cli.remote import Remote
    from berth.optimize.requests import OptimizeRequest

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
    weights: Path | None = typer.Option(
        None,
        help="PyTorch: the state_dict file (torch.save(model.state_dict(), path)) of the "
        "nn.Module class PATH defines; read with weights_only=True.",
    ),
    module_class: str | None = typer.Option(
        None, help="With --weights: the nn.Module class to build, when PATH defines several."
    ),
    init_args: str | None = typer.Option(
        None,
        help="""With --weights: the class's constructor arguments as JSON, e.g. '{"hidden": 32}'.""",
    ),
    accelerate: bool = typer.Option(
        True,
        "--accelerate/--no-accelerate",
        help="scikit-learn versions: also make an ONNX twin, checked to give the same answers "
        "on the example rows, which serves in the version's place (several times faster).",
    ),
) -> None:
    """Register a file, directory or archive as the next version of a model.

    Archives (.tar.gz, .tgz, .tar, .zip) are unpacked safely and registered as a directory.
    Pickle/joblib files need --trust-pickle; skops files with types of your own need --trust-type.
    A PyTorch network is a TorchScript file, or the .py file defining its nn.Module class with
    --weights (its state_dict) and --sample (a batch of inputs, .npy).

    Example: berth models register churn model.skops --sample train.csv --reference train.csv --metric auc=0.91 --alias production
    """
    from berth.registration.service import parse_metrics, parse_pairs

    metrics, tags = parse_metrics(metric), parse_pairs(tag, "tag")
    if weights is None:
        if module_class is not None or init_args is not None:
            raise InvalidInput(
                "--module-class and --init-args describe the nn.Module of --weights; add "
                "--weights net.pt (the state_dict) with the class file as the model path"
            )
        _register_path(
            name,
            path,
            flavor,
            sample,
            signature,
            reference,
            alias,
            metrics,
            tags,
            description,
            trust_pickle,
            trust_type,
            accelerate,
        )
        return
    from berth.registration.torch_folder import parse_init_args, torch_module_folder

    if flavor not in (None, "torch"):
        raise InvalidInput(f"--weights registers a torch network; drop --flavor {flavor}")
    with torch_module_folder(
        path, weights, module_class=module_class, init_args=parse_init_args(init_args)
    ) as folder:
        _register_path(
            name,
            folder,
            "torch",
            sample,
            signature,
            reference,
            alias,
            metrics,
            tags,
            description,
            trust_pickle,
            trust_type,
            accelerate,
        )


def _register_path(
    name: str,
    path: Path,
    flavor: str | None,
    sample: Path | None,
    signature: Path | None,
    reference: Path | None,
    alias: list[str],
    metrics: dict[str, float],
    tags: dict[str, str],
    description: str,
    trust_pickle: bool,
    trust_type: list[str],
    accelerate: bool,
) -> None:
    server = remote()
    if server is not None:
        document = _register_remotely(
            server,
            name,
            path,
            {"sample": sample, "signature": signature, "reference": reference},
            {
                "flavor": flavor,
                "metrics": metrics,
                "tags": tags,
                "description": description,
                "aliases": alias,
                "trust_pickle": trust_pickle,
                "trust_types": trust_type,
                "accelerate": accelerate,
            },
        )
    else:
        from berth.registration.service import RegisterRequest
        from berth.registration.service import register as register_version
        from berth.store.audit import cli_actor

        request = RegisterRequest(
            name=name,
            path=path,
            flavor=flavor,
            sample=sample,
            signature=signature,
            metrics=metrics,
            tags=tags,
            description=description,
            aliases=tuple(alias),
            trust_pickle=trust_pickle,
            trusted_types=tuple(trust_type),
            reference=reference,
            actor=cli_actor(),
        )
        with console.status(f"Checking and storing {path} ...") as status:
            version = register_version(registry(), request)
            if accelerate:
                from berth.optimize.twin import accelerate_registered

                version = accelerate_registered(
                    registry(),
                    version,
                    actor=request.actor,
                    progress=lambda step: status.update(f"Accelerated twin: {step} ..."),
                )
            document = version.registered_dict()
    _print_registered(document)


_UPLOAD_FLAGS = {
    "flavor": "--flavor",
    "metrics": "--metric",
    "tags": "--tag",
    "description": "--description",
    "aliases": "--alias",
    "trust_types": "--trust-type",
    "accelerate": "--no-accelerate",
}


def _register_remotely(
    server: Remote,
    name: str,
    path: Path,
    files: dict[str, Path | None],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Upload the artifact and its files; checked here first, as far as the flags go, so a
    mistake is told before a large file is sent."""
    from berth.cli.flags import from_flags
    from berth.cli.upload import PLACEHOLDER_SHA256, upload_version
    from berth.registration.artifact import missing_artifact
    from berth.registration.requests import UploadMetadata
    from berth.registry.references import check_name

    check_name("model", name)
    metadata = from_flags(UploadMetadata, _UPLOAD_FLAGS, {**options, "sha256": PLACEHOLDER_SHA256})
    source = path.expanduser()
    if not source.exists():
        raise InvalidInput(missing_artifact(source))
    for part in ("sample", "reference"):
        given = files[part]
        if given is not None and not given.exists():
            raise InvalidInput(
                f"sample file {given} does not exist; pass an existing .csv/.parquet/.json/.npy"
            )
    return upload_version(server, name, source, files, metadata)


def _print_registered(version: dict[str, Any]) -> None:
    """A new version from its document (`VersionInfo.registered_dict()`, which the upload
    route returns too)."""
    ref = f"{version['model']}:{version['version']}"
    aliases = ", ".join(f"@{a}" for a in version["aliases"]) or "none"
    console.print(
        f"Registered [bold]{ref}[/] ({version['flavor']}, sha256 {version['sha256'][:12]}, "
        f"aliases: {aliases})"
    )
    for note in version["notes"]:
        console.print(f"Note: {note}", highlight=False, markup=False)
    twin = version.get("accelerated")
    if twin:
        console.print(accelerated_line(version["model"], twin), highlight=False, markup=False)
    reference = version["reference"]
    if reference:
        console.print(
            f"Stored drift reference statistics of {len(reference['features'])} features "
            f"({reference['rows']} rows)"
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
        server.version(reference) if server is not None else registry().resolve(reference).to_dict()
    )
    if as_json:
        typer.echo(json.dumps(version, indent=2))
        return
    _print_version(version)


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
        str(detail[key])
        for key in ("method", "precision", "quantized", "opset", "compiled")
        if detail.get(key)
    )
    pruned = detail.get("pruned")
    if isinstance(pruned, dict):
        how += f", pruned {percent(pruned.get('amount'), 0)}"
    line = f"derived from {detail['source']}" + (f" ({how})" if how else "")
    check = detail.get("check")
    if isinstance(check, dict) and check.get("rows"):
        line += f"; checked on {check['rows']} rows"
        if check.get("label_agreement") is not None:
            line += f", labels identical on {percent(check['label_agreement'], 3)}"
        if check.get("max_probability_diff") is not None:
            line += f", max probability difference {number(check['max_probability_diff'])}"
        if check.get("max_value_diff") is not None:
            line += f", max relative difference {number(check['max_value_diff'])}"
        if check.get("optimized_accuracy") is not None:
            line += (
                f", accuracy {percent(check['source_accuracy'])} → "
                f"{percent(check['optimized_accuracy'])}"
            )
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
    to: str | None = typer.Option(
        None,
        "--to",
        help="The form to make: onnx (default), torchscript, or torch (a torch network's own "
        "form, the default with --prune).",
    ),
    torchscript: bool = typer.Option(False, "--torchscript", help="Same as --to torchscript."),
    prune: float | None = typer.Option(
        None,
        help="Torch networks: zero this share of each Linear/Conv layer's weights (e.g. 0.3), "
        "smallest magnitudes first, checked like --quantize.",
    ),
    max_accuracy_drop: float | None = typer.Option(
        None,
        help="With labelled --data (a 'label' column, or labels in an .npz), the accuracy an "
        "int8 or pruned form may lose (default 0.01, one point), instead of --tolerance.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Make a faster or smaller form of a version, check it predicts the same, and register it.

    scikit-learn (and XGBoost/LightGBM) models convert to ONNX; torch networks export to ONNX
    (--to onnx), compile to TorchScript (--torchscript), and can be pruned (--prune 0.3) or
    quantized (--quantize int8). Labels must be identical on at least 99.9% of the check rows
    and probabilities (or values) within the tolerance; an int8 or pruned form checked on
    labelled rows must keep its accuracy instead. Otherwise nothing is registered and the
    measured differences are shown. The report gives the size and the latency at batch 1 and
    64 of both. The new version keeps the signature, so clients send the same requests;
    `models show` shows its source.

    Example: berth models optimize churn:3 --data holdout.csv --alias staging
    """
    from berth.cli.flags import from_flags
    from berth.optimize.requests import OptimizeRequest

    if torchscript:
        if to not in (None, "torchscript"):
            raise InvalidInput(f"--torchscript asks for --to torchscript; drop --to {to}")
        to = "torchscript"
    asked = from_flags(
        OptimizeRequest,
        {
            "quantize": "--quantize",
            "tolerance": "--tolerance",
            "alias": "--alias",
            "to": "--to",
            "prune": "--prune",
            "max_accuracy_drop": "--max-accuracy-drop",
        },
        {
            "quantize": quantize,
            "tolerance": tolerance,
            "alias": alias,
            "to": to,
            "prune": prune,
            "max_accuracy_drop": max_accuracy_drop,
        },
    )
    server = remote()
    if server is not None:
        report = _optimize_remotely(server, reference, data, asked)
    else:
        # Imported here: the converters (skl2onnx, onnx) cost a second to import, and every
        # other command (and `berth serve`) would pay it.
        from berth.optimize.service import optimize
        from berth.store.audit import cli_actor

        with console.status(f"Optimizing {reference} ...") as status:
            report = optimize(
                registry(),
                reference,
                data=data,
                quantize=asked.quantize,
                tolerance=asked.tolerance,
                alias=asked.alias,
                to=asked.to,
                prune=asked.prune,
                max_accuracy_drop=asked.max_accuracy_drop,
                actor=cli_actor(),
                progress=lambda step: status.update(f"Optimizing {reference}: {step} ..."),
            ).to_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    print_optimized(report)


def _optimize_remotely(
    server: Remote, reference: str, data: Path | None, asked: OptimizeRequest
) -> dict[str, Any]:
    """The server optimizes; rows of `data`, if given, go with the options as a file."""
    from berth.cli.remote import LONG_SECONDS

    parse_reference(reference)
    route = remote_path("models", reference, "optimize")
    options = asked.model_dump(exclude_none=True)
    if data is None:
        with console.status(f"Optimizing {reference} on {server.url} ..."):
            document: dict[str, Any] = server.post(route, options, timeout=LONG_SECONDS)
        return document
    from berth.cli.upload import FilePart, send

    rows = data.expanduser()
    if not rows.is_file():
        raise InvalidInput(
            f"--data {rows} does not exist; give a .csv/.parquet/.json file with the "
            "signature's columns, or a .npy array for a tensor model"
        )
    document = send(
        server,
        route,
        [FilePart("data", rows, rows.name)],
        lambda _digests: {"options": json.dumps(options).encode()},
        sending=f"Sending {rows.name}",
        waiting=f"Optimizing {reference} on {server.url}",
    )
    return document


@app.command("accelerate")
def accelerate_command(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    as_json: bool = typer.Option(False, "--json", help="Print the version as JSON."),
) -> None:
    """Make a scikit-learn version's accelerated twin: its ONNX form, checked to give the same
    answers on the version's example rows, which servers then serve in its place.

    Registering does this by itself; this is for versions registered before twins existed, or
    with --no-accelerate. A twin that cannot be made keeps the reason, shown here. Servers
    serving the version load the twin with their next refresh.

    Example: berth models accelerate churn@production
    """
    parse_reference(reference)
    server = remote()
    if server is not None:
        from berth.cli.remote import LONG_SECONDS

        with console.status(f"Accelerating {reference} on {server.url} ..."):
            version: dict[str, Any] = server.post(
                remote_path("models", reference, "accelerate"), None, timeout=LONG_SECONDS
            )
    else:
        from berth.optimize.twin import accelerate
        from berth.store.audit import cli_actor

        found = registry().resolve(reference)
        with console.status(f"Accelerating {found.ref} ...") as status:
            version = accelerate(
                registry(),
                found,
                actor=cli_actor(),
                progress=lambda step: status.update(f"Accelerating {found.ref}: {step} ..."),
            ).to_dict()
    if as_json:
        typer.echo(json.dumps(version, indent=2))
        return
    console.print(
        f"{version['model']}:{version['version']}: "
        + accelerated_line(version["model"], version["accelerated"]),
        highlight=False,
        markup=False,
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
    from berth.registry.references import check_alias, check_name
    from berth.registry.requests import AliasRequest
    from berth.store.audit import cli_actor

    server = remote()
    if server is not None:
        # Checked here as the registry checks them: a name with a slash would be another path.
        check_name("model", name)
        check_alias(alias_name)
    route = remote_path("models", name, "aliases", alias_name)
    if remove:
        if server is not None:
            server.delete(route)
        else:
            registry().remove_alias(name, alias_name, actor=cli_actor())
        console.print(f"Removed {name}@{alias_name}")
        return
    if version is None:
        raise InvalidInput(
            "give the version to point at, e.g. `berth models alias churn production 3`"
        )
    asked = from_flags(AliasRequest, {"version": "VERSION"}, {"version": version})
    if server is not None:
        server.put(route, asked.model_dump())
    else:
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
    server = remote()
    if ref.version is not None:
        if server is not None:
            server.delete(remote_path("models", ref.name, "versions", ref.version))
        else:
            registry().delete_version(ref.name, ref.version, actor=cli_actor())
        console.print(f"Deleted {ref}")
        return
    if not yes:
        raise InvalidInput(
            f"deleting model '{ref.name}' removes every version; add --yes to confirm"
        )
    if server is not None:
        # The route asks for the name twice; --yes is this command's way of giving it.
        server.delete(remote_path("models", ref.name), params={"confirm": ref.name})
    else:
        registry().delete_model(ref.name, actor=cli_actor())
    console.print(f"Deleted model {ref.name}")


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

    Live inputs are kept by the server: in remote mode (`berth login`, BERTH_SERVER) or with
    --url (and --key) the server's live drift is shown; otherwise the stored reference
    statistics are.

    Example: berth models drift churn --url http://127.0.0.1:8321 --key berth_...
    """
    from berth.cli.remote import GivenServer

    server = GivenServer(url, key) if url is not None else remote()
    if server is None:
        print_reference(registry().resolve(reference), as_json)
        return
    parse_reference(reference)  # a bad reference fails here, with the usual message
    report = server.get(remote_path("models", reference, "drift"))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    print_live_drift(report)
