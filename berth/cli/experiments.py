"""`berth experiments ...`: A/B tests between versions behind one endpoint, and their reports.

Each command prints from the JSON documents the admin API returns: in local mode it builds them
with the service (`to_dict()`), in remote mode it asks the server for them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from berth.cli.context import console, registry, remote
from berth.cli.remote import path as api
from berth.rollouts.names import EXPERIMENT_METRICS as METRICS

# The experiment service (SQLAlchemy, numpy) is imported by the commands that use it.
if TYPE_CHECKING:
    from berth.rollouts.experiments import ExperimentService

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
    server = remote()
    if server is not None:
        body = asked.model_dump(mode="json", exclude_unset=True)
        info: dict[str, Any] = server.post(api("experiments"), body)
    else:
        started = _service().start(
            asked.endpoint,
            asked.variants,
            asked.sticky,
            asked.metric,
            asked.alpha,
            asked.min_samples,
            actor=cli_actor(),
        )
        info = started.to_dict()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    console.print(
        f"Started experiment {info['id']} on [bold]{endpoint}[/]: {_split(info)}, sticky on "
        f"{info['sticky']}, metric {info['metric']}. Read it with `berth experiments report "
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
    server = remote()
    if server is not None:
        query = {"metrics_source": metrics_source} if metrics_source is not None else None
        document: dict[str, Any] = server.get(api("experiments", endpoint, "report"), query)
    else:
        info, found = _service().report(endpoint, metrics_source)
        document = {"experiment": info.to_dict(), "report": found.to_dict()}
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    print_report(document["experiment"], document["report"])


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
    server = remote()
    if server is not None:
        body = asked.model_dump(mode="json", exclude_unset=True)
        info: dict[str, Any] = server.post(api("experiments", endpoint, "conclude"), body)
    else:
        info = _service().conclude(endpoint, asked.winner, actor=cli_actor()).to_dict()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    chosen = next(v for v in info["variants"] if v["name"] == winner)
    console.print(
        f"Concluded experiment {info['id']} on {endpoint}: {winner} ({_ref(chosen)}) takes all "
        "traffic",
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
    server = remote()
    if server is not None:
        query = {"endpoint": endpoint} if endpoint else None
        found: list[dict[str, Any]] = server.get(api("experiments"), query)["experiments"]
    else:
        found = [e.to_dict() for e in _service().list(endpoint)]
    if as_json:
        typer.echo(json.dumps(found, indent=2))
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
            str(info["id"]),
            info["endpoint"],
            info["status"],
            _split(info),
            info["metric"],
            info["winner"] or "-",
            f"{datetime.fromisoformat(info['started_at']):%Y-%m-%d %H:%M}",
        )
    console.print(table)


# output --------------------------------------------------------------------------------------


def _ref(variant: dict[str, Any]) -> str:
    return f"{variant['model']}:{variant['version']}"


def _split(info: dict[str, Any]) -> str:
    return ", ".join(f"{v['name']}={_ref(v)} {v['weight']:g}%" for v in info["variants"])


def print_report(info: dict[str, Any], found: dict[str, Any]) -> None:
    """An experiment and its report, from their documents (`ExperimentInfo.to_dict()` and
    `ExperimentReport.to_dict()`, as the API answers)."""
    metric, alpha = found["metric"], found["alpha"]
    console.print(
        f"[bold]experiment {info['id']}[/] on [bold]{info['endpoint']}[/]: {info['status']}"
        + (f", winner {info['winner']}" if info["winner"] else "")
        + f"; metric {metric}, alpha {alpha:g}, sticky on {info['sticky']}",
        highlight=False,
    )
    confidence = f"{1 - alpha:.0%}"
    table = Table(
        "variant",
        "version",
        "requests",
        "errors",
        "mean ms",
        "p99 ms",
        "samples",
        metric,
        f"{confidence} interval",
        title="variants (the first is the control)",
    )
    for row in found["variants"]:
        low, high = row["ci_low"], row["ci_high"]
        table.add_row(
            row["name"],
            row["reference"],
            str(row["requests"]),
            _errors(row),
            _number(row["mean_latency_ms"], "{:.1f}"),
            _number(row["p99_ms"], "{:.1f}"),
            f"{row['samples']}/{found['min_samples']}",
            _estimate(metric, row["estimate"]),
            "-"
            if low is None or high is None
            else f"{_estimate(metric, low)} .. {_estimate(metric, high)}",
        )
    console.print(table)
    if found["comparisons"]:
        tests = Table(
            "variant",
            "vs control",
            "difference",
            "test",
            "p-value",
            "significant",
            title=f"comparisons (each at alpha {found['comparison_alpha']:.3g})",
        )
        for comparison in found["comparisons"]:
            tests.add_row(
                comparison["variant"],
                comparison["control"],
                _difference(metric, comparison["difference"]),
                comparison["test"]["name"],
                f"{comparison['test']['p_value']:.4g}",
                "[green]yes[/]" if comparison["significant"] else "no",
            )
        console.print(tests)
    recommendation = found["recommendation"]
    if recommendation:
        console.print(
            f"[bold green]recommendation:[/] {recommendation}. {found['explanation']} "
            f"Conclude with `berth experiments conclude {info['endpoint']} --winner "
            f"{recommendation}`.",
            highlight=False,
        )
    else:
        console.print(f"[yellow]no recommendation yet:[/] {found['explanation']}", highlight=False)


def _errors(row: dict[str, Any]) -> str:
    if row["error_rate"] is None:
        return str(row["errors"])
    return f"{row['errors']} ({row['error_rate']:.1%})"


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _estimate(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if metric == "accuracy" else f"{value:.4g}"


def _difference(metric: str, value: float) -> str:
    if metric == "accuracy":
        return f"{value * 100:+.1f} pp"
    return f"{value:+.4g}"
