"""`berth feedback performance` and `berth feedback prune`: live performance and log retention.

Performance is printed from its JSON document (`VersionPerformance.to_dict()`), which in remote
mode is the admin API's answer, so both modes print the same.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from berth.cli.context import console, registry, remote, settings
from berth.cli.remote import path as remote_path
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
    since = None if window == "all" else parse_duration(window)
    server = remote()
    if server is not None:
        query = {"window": window, "last": last, "version": version}
        params = {key: value for key, value in query.items() if value is not None}
        path = remote_path("models", model, "performance")
        found: list[dict[str, Any]] = server.get(path, params)["versions"]
    else:
        from berth.monitoring.performance import compute_performance

        db = registry().db
        registry().get_model(model)  # an unknown model is an error, as the API says
        scores = compute_performance(db, model, version, Window(since=since, last=last))
        found = [row.to_dict() for row in scores]
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table("version", "kind", "count", "labelled", "accuracy", "auc", "mae", "rmse")
    for row in found:
        table.add_row(
            str(row["version"]),
            row["kind"] or "-",
            str(row["count"]),
            str(row["labelled"]),
            *(_number(row[key]) for key in ("accuracy", "auc", "mae", "rmse")),
        )
    console.print(table)


@app.command("prune")
def prune() -> None:
    """Apply the prediction log's retention now (prediction_log_max_age and _max_rows).

    A running server does this every minute on its own. In remote mode, the server's
    retention settings apply.

    Example: berth feedback prune
    """
    server = remote()
    if server is not None:
        deleted = server.post(remote_path("prediction-log", "prune"), {})["deleted"]
    else:
        from berth.monitoring.config import PredictionLogConfig
        from berth.monitoring.prediction_log import PredictionLog
        from berth.store.audit import cli_actor

        log = PredictionLog(registry().db, PredictionLogConfig.from_settings(settings()))
        deleted = log.prune(actor=cli_actor())
    typer.echo(f"deleted {deleted} logged predictions")
