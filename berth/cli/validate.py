"""`berth validate`: run validation gates on a version; exit 1 when one fails (for CI)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from berth.cli.context import console, registry


def validate(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
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
        help="Another version (e.g. churn@production): each metric on the same rows may not be "
        "worse than that version's (accuracy and AUC, or RMSE and MAE, when no metric is given).",
    ),
    regression_tolerance: float = typer.Option(
        0.0, help="How much worse than --no-regression-vs a metric may be, e.g. 0.01."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a version on test data before it takes traffic; exit 1 if any gate fails.

    Metrics compare predictions with the --target column; a gate that does not fit the model
    (AUC of a regressor, RMSE of a classifier) is an error, not a pass.

    Example: berth validate churn:4 --data holdout.csv --target churned --min-auc 0.85 --max-latency-ms 10 --no-regression-vs churn@production
    """
    from berth.ops.gate_config import GateConfig, parse_output_range
    from berth.ops.gate_report import format_value, report_table
    from berth.ops.validation import run_gates

    config = GateConfig(
        data=data,
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
    if as_json:
        report = run_gates(registry(), reference, config)
        typer.echo(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        with console.status(f"Validating {reference} ..."):
            report = run_gates(registry(), reference, config)
        source = f" of {data.name}" if data is not None else ""
        console.print(report_table(report, f"{report.reference}: {report.rows} rows{source}"))
        failures = report.failures()
        if failures:
            shown = ", ".join(f"{c.name} ({format_value(c.value)})" for c in failures)
            console.print(
                f"[bold red]FAIL[/] {len(failures)} of {len(report.checks)} checks failed: {shown}",
                highlight=False,
            )
        else:
            console.print(f"[green]PASS[/] all {len(report.checks)} checks passed", highlight=False)
    if not report.passed:
        raise typer.Exit(1)
