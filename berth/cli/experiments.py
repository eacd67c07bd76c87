"""`berth experiments ...`: A/B tests between versions behind one endpoint, and their reports."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from berth.cli.context import console, registry
from berth.rollouts.names import EXPERIMENT_METRICS as METRICS

# The experiment service (SQLAlchemy, numpy) is imported by the commands that use it.
if TYPE_CHECKING:
    from berth.rollouts.experiment_analysis import ExperimentReport, VariantRow
    from berth.rollouts.experiments import ExperimentInfo, ExperimentService

app = typer.Typer(
    help="A/B experiments: split an endpoint between versions, compare them, pick a winner.",
    no_args_is_help=True,
)


def _service() -> ExperimentService:
    from berth.rollouts.experiments import ExperimentService

    return ExperimentService(registry())


@app.command("start")
def start(
    endpoint: str = typer.Argument(..., help="The endpoint to split, e.g. churn."),
    variant: list[str] = typer.Option(
        ...,
        "--variant",
        help="NAME=MODEL:VERSION:WEIGHT, e.g. a=churn:2:50 (repeatable, at least two; the "
        "first is the control; weights add up to 100).",
    ),
    sticky: str = typer.Option(
        "header:X-User-ID",
        help="Where each user's key is read, so a user keeps one variant: header:NAME, "
        "cookie:NAME or field:NAME.",
    ),
    metric: str = typer.Option(
        "accuracy",
        help=f"What decides: {' or '.join(METRICS)} (share of correct predictions, or the mean "
        "numeric outcome posted as feedback; higher is better).",
    ),
    alpha: float = typer.Option(0.05, help="Significance level of the comparisons."),
    min_samples: int = typer.Option(
        100, help="Observations of the metric each variant needs before a recommendation."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Split an endpoint's traffic between versions; each user sticks to one variant.

    The variants replace the endpoint's routes until the experiment is concluded. Refused
    while a rollout or another experiment runs on the endpoint.

    Example: berth experiments start churn --variant a=churn:2:50 --variant b=churn:3:50 --metric accuracy
    """
    from berth.cli.flags import from_flags
    from berth.rollouts.requests import ExperimentRequest
    from berth.store.audit import cli_actor

    asked = from_flags(
        ExperimentRequest,
        {"endpoint": "ENDPOINT", "variants": "--variant", "sticky": "--sticky",
         "metric": "--metric", "alpha": "--alpha", "min_samples": "--min-samples"},
        {"endpoint": endpoint, "variants": variant, "sticky": sticky, "metric": metric,
         "alpha": alpha, "min_samples": min_samples},
    )  # fmt: skip
    info = _service().start(
        asked.endpoint,
        asked.variants,
        asked.sticky,
        asked.metric,
        asked.alpha,
        asked.min_samples,
        actor=cli_actor(),
    )
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    split = ", ".join(f"{v.name}={v.ref} {v.weight:g}%" for v in info.variants)
    console.print(
        f"Started experiment {info.id} on [bold]{endpoint}[/]: {split}, sticky on "
        f"{info.sticky}, metric {info.metric}. Read it with `berth experiments report "
        f"{endpoint}`.",
        highlight=False,
    )


@app.command("report")
def report(
    endpoint: str = typer.Argument(..., help="The endpoint."),
    metrics_source: str | None = typer.Option(
        None,
        help="Where traffic totals come from: server (the default) or a Prometheus URL, "
        "e.g. http://127.0.0.1:9090.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per variant since the start: traffic, the metric with its interval, and the tests.

    The first variant is the control; every other one is compared with it (two-sided). A
    winner is recommended only when every variant has --min-samples observations.

    Example: berth experiments report churn
    """
    info, found = _service().report(endpoint, metrics_source)
    if as_json:
        typer.echo(json.dumps({"experiment": info.to_dict(), "report": found.to_dict()}, indent=2))
        return
    print_report(info, found)


@app.command("conclude")
def conclude(
    endpoint: str = typer.Argument(..., help="The endpoint."),
    winner: str = typer.Option(..., "--winner", help="The variant's name, e.g. b."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """End the experiment: the winner becomes the endpoint's one stable route.

    Example: berth experiments conclude churn --winner b
    """
    from berth.cli.flags import from_flags
    from berth.rollouts.requests import ConcludeRequest
    from berth.store.audit import cli_actor

    asked = from_flags(ConcludeRequest, {"winner": "--winner"}, {"winner": winner})
    info = _service().conclude(endpoint, asked.winner, actor=cli_actor())
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    chosen = next(v for v in info.variants if v.name == winner)
    console.print(
        f"Concluded experiment {info.id} on {endpoint}: {winner} ({chosen.ref}) takes all traffic",
        highlight=False,
    )


@app.command("list")
def list_experiments(
    endpoint: str | None = typer.Option(None, help="Only this endpoint's experiments."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List experiments, newest first.

    Example: berth experiments list --endpoint churn
    """
    found = _service().list(endpoint)
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in found], indent=2))
        return
    if not found:
        console.print(
            "No experiments yet; start one with `berth experiments start ENDPOINT "
            "--variant a=MODEL:V:50 --variant b=MODEL:W:50`"
        )
        return
    table = Table("id", "endpoint", "status", "variants", "metric", "winner", "started")
    for info in found:
        table.add_row(
            str(info.id),
            info.endpoint,
            info.status,
            ", ".join(f"{v.name}={v.ref} {v.weight:g}%" for v in info.variants),
            info.metric,
            info.winner or "-",
            f"{info.started_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


# output --------------------------------------------------------------------------------------


def print_report(info: ExperimentInfo, found: ExperimentReport) -> None:
    console.print(
        f"[bold]experiment {info.id}[/] on [bold]{info.endpoint}[/]: {info.status}"
        + (f", winner {info.winner}" if info.winner else "")
        + f"; metric {found.metric}, alpha {found.alpha:g}, sticky on {info.sticky}",
        highlight=False,
    )
    confidence = f"{1 - found.alpha:.0%}"
    table = Table(
        "variant",
        "version",
        "requests",
        "errors",
        "mean ms",
        "p99 ms",
        "samples",
        found.metric,
        f"{confidence} interval",
        title="variants (the first is the control)",
    )
    for row in found.variants:
        table.add_row(
            row.name,
            row.reference,
            str(row.requests),
            _errors(row),
            _number(row.mean_latency_ms, "{:.1f}"),
            _number(row.p99_ms, "{:.1f}"),
            f"{row.samples}/{found.min_samples}",
            _estimate(found, row.estimate),
            "-"
            if row.ci_low is None or row.ci_high is None
            else f"{_estimate(found, row.ci_low)} .. {_estimate(found, row.ci_high)}",
        )
    console.print(table)
    if found.comparisons:
        tests = Table(
            "variant",
            "vs control",
            "difference",
            "test",
            "p-value",
            "significant",
            title=f"comparisons (each at alpha {found.comparison_alpha:.3g})",
        )
        for comparison in found.comparisons:
            tests.add_row(
                comparison.variant,
                comparison.control,
                _difference(found, comparison.difference),
                comparison.test.name,
                f"{comparison.test.p_value:.4g}",
                "[green]yes[/]" if comparison.significant else "no",
            )
        console.print(tests)
    if found.recommendation:
        console.print(
            f"[bold green]recommendation:[/] {found.recommendation}. {found.explanation} "
            f"Conclude with `berth experiments conclude {info.endpoint} --winner "
            f"{found.recommendation}`.",
            highlight=False,
        )
    else:
        console.print(f"[yellow]no recommendation yet:[/] {found.explanation}", highlight=False)


def _errors(row: VariantRow) -> str:
    if row.error_rate is None:
        return str(row.errors)
    return f"{row.errors} ({row.error_rate:.1%})"


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _estimate(found: ExperimentReport, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if found.metric == "accuracy" else f"{value:.4g}"


def _difference(found: ExperimentReport, value: float) -> str:
    if found.metric == "accuracy":
        return f"{value * 100:+.1f} pp"
    return f"{value:+.4g}"
