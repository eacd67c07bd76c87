"""`berth feedback performance` and `berth feedback prune`: live performance and log retention."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from berth.cli.context import console, registry, settings
from berth.durations import parse_duration
from berth.observability.window import MAX_LABELLED, Window

app = typer.Typer(
    help="Live performance from feedback, and the prediction log.", no_args_is_help=True
)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command("performance")
def performance(
    model: str = typer.Argument(..., help="The model name."),
    window: str = typer.Option("24h", help="Predictions within this span, e.g. 1h or 7d; `all`."),
    last: int | None = typer.Option(
        None, min=1, max=MAX_LABELLED, help="Only the most recent this-many labelled rows."
    ),
    version: int | None = typer.Option(None, min=1, help="Only this version."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Accuracy and AUC (classifiers) or MAE and RMSE (regressors) per version.

    Example: berth feedback performance churn --window 7d
    """
    from berth.monitoring.performance import compute_performance

    since = None if window == "all" else parse_duration(window)
    found = compute_performance(registry().db, model, version, Window(since=since, last=last))
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in found], indent=2))
        return
    table = Table("version", "kind", "count", "labelled", "accuracy", "auc", "mae", "rmse")
    for row in found:
        s = row.scores
        table.add_row(
            str(row.version),
            s.kind or "-",
            str(row.count),
            str(row.labelled),
            *(_number(v) for v in (s.accuracy, s.auc, s.mae, s.rmse)),
        )
    console.print(table)


@app.command("prune")
def prune() -> None:
    """Apply the prediction log's retention now (prediction_log_max_age and _max_rows).

    A running server does this every minute on its own.
    """
    from berth.monitoring.config import PredictionLogConfig
    from berth.monitoring.prediction_log import PredictionLog

    log = PredictionLog(registry().db, PredictionLogConfig.from_settings(settings()))
    deleted = log.apply_retention()
    typer.echo(f"deleted {deleted} logged predictions")
