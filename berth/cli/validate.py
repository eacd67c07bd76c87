"""`berth validate`: run validation gates on a model file or a version; exit 1 when one fails.

A CI pipeline runs it on the candidate file before registering anything. In remote mode the
gates run on the server (`POST /api/v1/validate`): the candidate and the test rows are uploaded,
and the report printed is the one the server answers, so both modes print the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.context import console, registry, remote, settings
from berth.runtimes import FLAVORS

# The gates need numpy, pandas and the runtimes: imported by the command, not by `berth --help`.
if TYPE_CHECKING:
    from berth.cli.remote import Remote
    from berth.ops.gate_config import GateConfig
    from berth.ops.gate_report import GateReport

_VALIDATE_SECONDS = 3600.0
"""How long the command waits for the server's gates (a large file, the latency gate)."""


def validate(
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="A model file, directory or archive that is not registered (e.g. model.skops, "
        "./candidate), or a registered version: NAME, NAME:VERSION or NAME@ALIAS.",
    ),
    data: Path | None = typer.Option(
        None, help="Test rows: .csv, .parquet, .json or .jsonl (.npy for a tensor model)."
    ),
    target: str | None = typer.Option(
        None, help="The column of --data holding the true outcome (not given to the model)."
    ),
    min_accuracy: float | None = typer.Option(
        None, help="Classifiers: share of rows predicted right, at least this (0..1)."
    ),
    min_auc: float | None = typer.Option(
        None, help="Classifiers with probabilities: ROC AUC (macro one-vs-rest if multi-class)."
    ),
    max_rmse: float | None = typer.Option(None, help="Regressors: root mean squared error."),
    max_mae: float | None = typer.Option(None, help="Regressors: mean absolute error."),
    max_latency_ms: float | None = typer.Option(
        None, help="p99 milliseconds of one-row predictions, in process (model only)."
    ),
    no_nan: bool = typer.Option(
        False, "--no-nan", help="Fail on NaN or infinity in predictions or probabilities."
    ),
    output_range: str | None = typer.Option(
        None,
        help="LOW,HIGH: every numeric prediction (or class probability, for text labels) "
        "within it, e.g. 0,1.",
    ),
    no_regression_vs: str | None = typer.Option(
        None,
        help="A registered version (e.g. churn@production): each metric on the same rows may "
        "not be worse than that version's (accuracy and AUC, or RMSE and MAE, when no metric "
        "is given).",
    ),
    regression_tolerance: float = typer.Option(
        0.0, help="How much worse than --no-regression-vs a metric may be, e.g. 0.01."
    ),
    server_data: str | None = typer.Option(
        None,
        help="Test rows already on the server, instead of --data: a file under its "
        "BERTH_VALIDATION_DATA_DIR, e.g. holdout/churn.csv.",
    ),
    flavor: str | None = typer.Option(
        None, help=f"A model file's flavor: one of {', '.join(FLAVORS)}; detected if omitted."
    ),
    sample: Path | None = typer.Option(
        None,
        help="A model file's sample input (.csv/.parquet/.json/.npy) for its signature; "
        "default the --data rows without --target.",
    ),
    signature: Path | None = typer.Option(
        None, help="A model file's signature JSON (instead of --sample)."
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="Accept a pickle/joblib model file. Loading a pickle runs any code it holds: only "
        "for files you trust (recorded in the audit log).",
    ),
    trust_type: list[str] = typer.Option(
        [],
        "--trust-type",
        help="A type the skops model file may load beyond scikit-learn, numpy and scipy "
        "(repeatable).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a model on test data before it is registered or takes traffic; exit 1 if any gate
    fails.

    MODEL is a file (loaded as `berth models register` loads it, with the same --trust-pickle
    and --trust-type rules, and nothing registered) or a registered version. A bare name is a
    registered model unless it ends in a model file's suffix (.skops, .onnx, .tar.gz, ...);
    write ./NAME for a file or folder so named, NAME@production for a model so named.

    Metrics compare predictions with the --target column; a gate that does not fit the model
    (AUC of a regressor, RMSE of a classifier) is an error, not a pass. With a server profile
    (BERTH_SERVER and BERTH_API_KEY, or `berth login`) the gates run on the server.

    Example: berth validate model.skops --data holdout.csv --target churned --min-auc 0.85 --max-latency-ms 10 --no-regression-vs churn@production
    """
    from berth.cli.model_argument import model_argument
    from berth.errors import InvalidInput
    from berth.ops.gate_config import GateConfig, parse_output_range
    from berth.ops.gate_report import GateReport
    from berth.ops.validation import require_gates

    if data is not None and server_data is not None:
        raise InvalidInput("give the test rows with either --data or --server-data, not both")
    server = remote()
    chosen = model_argument(model)
    loading = {
        "--flavor": flavor,
        "--sample": sample,
        "--signature": signature,
        "--trust-pickle": trust_pickle or None,
        "--trust-type": trust_type or None,
    }
    if isinstance(chosen, str) and any(value is not None for value in loading.values()):
        given = [flag for flag, value in loading.items() if value is not None]
        raise InvalidInput(
            f"{', '.join(given)} {'describes' if len(given) == 1 else 'describe'} a model file; "
            f"{model} is a registered version, which loads as it was registered, so leave "
            f"{'it' if len(given) == 1 else 'them'} out"
        )
    config = GateConfig(
        # Test rows on the server: their path is the server's to find (and check).
        data=Path(server_data) if server_data is not None else data,
        target=target,
        min_accuracy=min_accuracy,
        min_auc=min_auc,
        max_rmse=max_rmse,
        max_mae=max_mae,
        max_latency_ms=max_latency_ms,
        no_nan=no_nan,
        output_range=None if output_range is None else parse_output_range(output_range),
        no_regression_vs=no_regression_vs,
        regression_tolerance=regression_tolerance,
    )
    require_gates(config)  # before anything is uploaded
    if server_data is not None and server is None:
        from berth.ops.server_data import server_data_file

        found = server_data_file(settings().validation_data_dir, server_data)
        config = replace(config, data=found)
    candidate = _Candidate(chosen, flavor, sample, signature, trust_pickle, tuple(trust_type))
    if server is not None:
        document = _remote_report(server, candidate, config, server_data)
    elif as_json:
        document = _local_report(candidate, config)
    else:
        with console.status(f"Validating {model} ..."):
            document = _local_report(candidate, config)
    if as_json:
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
    else:
        source = server_data if server_data is not None else data.name if data else None
        _print_report(GateReport.from_dict(document), source)
    if not document["passed"]:
        raise typer.Exit(1)


@dataclass(frozen=True)
class _Candidate:
    """What MODEL names (a file to load, or a registry reference) and how to load a file."""

    chosen: Path | str
    flavor: str | None
    sample: Path | None
    signature: Path | None
    trust_pickle: bool
    trusted_types: tuple[str, ...]


def _local_report(candidate: _Candidate, config: GateConfig) -> dict[str, Any]:
    from berth.ops.candidate import CandidateFile, run_gates_on_file
    from berth.ops.validation import run_gates
    from berth.store.audit import cli_actor

    chosen = candidate.chosen
    if isinstance(chosen, str):
        return run_gates(registry(), chosen, config).to_dict()
    request = CandidateFile(
        path=chosen,
        label=_label(chosen),
        flavor=candidate.flavor,
        sample=candidate.sample,
        signature=candidate.signature,
        trust_pickle=candidate.trust_pickle,
        trusted_types=candidate.trusted_types,
        actor=cli_actor(),
    )
    return run_gates_on_file(registry(), request, config).to_dict()


def _label(path: Path) -> str:
    """How the report names a model file: its name, as the server names an uploaded one."""
    return path.expanduser().resolve().name if path.name in ("", ".", "..") else path.name


def _remote_report(
    server: Remote, candidate: _Candidate, config: GateConfig, server_data: str | None
) -> dict[str, Any]:
    """The server's report (`POST /api/v1/validate`), after uploading what it needs."""
    from contextlib import ExitStack

    from berth.cli.remote import path as remote_path
    from berth.cli.upload import PLACEHOLDER_SHA256, FilePart, packed, send
    from berth.errors import InvalidInput
    from berth.ops.requests import GateThresholds, ValidateRequest
    from berth.ops.validation import missing_data
    from berth.registration.artifact import missing_artifact

    chosen = candidate.chosen
    request: dict[str, Any] = {"gates": GateThresholds.of(config), "data_file": server_data}
    with ExitStack() as stack:

        def part(name: str, path: Path, missing: str) -> FilePart:
            source = path.expanduser()
            if not source.exists():
                raise InvalidInput(missing)
            sent = stack.enter_context(packed(source)) if source.is_dir() else source
            return FilePart(name, sent, sent.name)

        parts: list[FilePart] = []
        if server_data is None and config.data is not None:
            parts.append(part("data", config.data, missing_data(config.data)))
        if isinstance(chosen, str):
            request["reference"] = chosen
        else:
            parts.append(part("artifact", chosen, missing_artifact(chosen)))
            for name, path in (("sample", candidate.sample), ("signature", candidate.signature)):
                if path is not None:
                    missing = f"--{name} {path} does not exist; give the path of an existing file"
                    parts.append(part(name, path, missing))
            request.update(
                sha256=PLACEHOLDER_SHA256,  # stamped with the digest of the bytes as sent
                label=_label(chosen),
                flavor=candidate.flavor,
                trust_pickle=candidate.trust_pickle,
                trust_types=list(candidate.trusted_types),
            )
        asked = ValidateRequest.parse({k: v for k, v in request.items() if v is not None})

        def fields(digests: Mapping[str, str]) -> dict[str, bytes]:
            stamped = (
                asked.model_copy(update={"sha256": digests["artifact"]})
                if "artifact" in digests
                else asked
            )
            return {"request": stamped.model_dump_json(exclude_defaults=True).encode()}

        document: dict[str, Any] = send(
            server,
            remote_path("validate"),
            parts,
            fields,
            sending="Uploading to " + server.url,
            waiting=f"Validating on {server.url} ...",
            timeout=_VALIDATE_SECONDS,
        )
    return document


def _print_report(report: GateReport, source: str | None) -> None:
    from berth.ops.gate_report import format_value, report_table

    shown = f" of {source}" if source else ""
    console.print(report_table(report, f"{report.reference}: {report.rows} rows{shown}"))
    failures = report.failures()
    if failures:
        listed = ", ".join(f"{c.name} ({format_value(c.value)})" for c in failures)
        console.print(
            f"[bold red]FAIL[/] {len(failures)} of {len(report.checks)} checks failed: {listed}",
            highlight=False,
        )
    else:
        console.print(f"[green]PASS[/] all {len(report.checks)} checks passed", highlight=False)
