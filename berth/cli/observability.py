"""`berth observability ...`: Prometheus alert rules, a Grafana dashboard, a scrape config."""

from __future__ import annotations

from pathlib import Path

import typer

from berth.cli.context import console
from berth.defaults import DEFAULT_PORT
from berth.errors import InvalidInput
from berth.observability.alerts import AlertOptions, build_rules, render_rules, rule_names
from berth.observability.dashboard import build_dashboard, render_dashboard
from berth.observability.prometheus_config import ScrapeOptions, build_config, render_config

app = typer.Typer(
    help="Generate Prometheus alert rules, a Grafana dashboard and a Prometheus scrape config.",
    no_args_is_help=True,
)

OUT_HELP = "File to write (default: print to standard output)."


def _emit(text: str, out: Path | None, what: str) -> None:
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.is_dir():
        raise InvalidInput(f"--out {out} is a directory; give a file name, e.g. {out}/{what}")
    if not out.parent.is_dir():
        raise InvalidInput(f"--out {out}: folder {out.parent} does not exist; create it first")
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {out}: {exc.strerror}") from exc


@app.command("alerts")
def alerts(
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    slo_p99_ms: float = typer.Option(
        200.0, "--slo-p99-ms", help="Latency objective: HighLatency fires when p99 is above it."
    ),
    slo_availability: float = typer.Option(
        0.999,
        "--slo-availability",
        help="Availability objective (0.999 = 99.9%) for the error-budget burn-rate alerts.",
    ),
    error_rate: float = typer.Option(
        AlertOptions.error_rate,
        "--error-rate",
        help="HighErrorRate (critical) fires above this share of predictions failing on the "
        "server side; clients' invalid input is not counted.",
    ),
    client_error_rate: float = typer.Option(
        AlertOptions.client_error_rate,
        "--client-error-rate",
        help="HighClientErrorRate (warning) fires above this share of predictions refused as "
        "invalid input.",
    ),
    accuracy_drop: float = typer.Option(
        0.05,
        "--accuracy-drop",
        help="ModelAccuracyDrop fires when accuracy falls this much below its recent best.",
    ),
    accuracy_baseline: str = typer.Option(
        "1d", "--accuracy-baseline", help="How far back 'recent best' accuracy looks."
    ),
    accuracy_metrics: str = typer.Option(
        AlertOptions.accuracy_metrics,
        "--accuracy-metrics",
        help="Feedback metrics (regex alternatives) where higher is better; others never alert.",
    ),
    drift_psi: float = typer.Option(
        0.25, "--drift-psi", help="FeatureDrift fires above this drift score (PSI)."
    ),
    rate_window: str = typer.Option(
        "5m",
        "--rate-window",
        help="Rate window of HighLatency, HighErrorRate and HighClientErrorRate.",
    ),
    hold: str | None = typer.Option(
        None,
        "--for",
        help="How long every alert's condition must hold before it fires, overriding the "
        "defaults (5m to 1h); 0s fires at once (tests, demos).",
    ),
    interval: str | None = typer.Option(
        None,
        "--interval",
        help="Evaluation interval of the rule groups (default: Prometheus' global one).",
    ),
    job: str = typer.Option("berth", "--job", help="Scrape job name, for BerthTargetDown."),
    runbook_url: str | None = typer.Option(
        None, "--runbook-url", help="Base URL of your runbook; alerts link to URL#alertname."
    ),
    backup_max_age: str | None = typer.Option(
        None,
        "--backup-max-age",
        help="Add BackupTooOld: the newest backup may be this old, e.g. 26h for daily backups.",
    ),
    stream_lag: int = typer.Option(
        AlertOptions.stream_lag,
        "--stream-lag",
        help="StreamConsumerLagHigh fires when a stream consumer group is more than this many "
        "events behind.",
    ),
    stream_lag_for: str = typer.Option(
        AlertOptions.stream_lag_for,
        "--stream-lag-for",
        help="How long the lag must stay over --stream-lag before StreamConsumerLagHigh fires.",
    ),
    stream_stall_for: str = typer.Option(
        AlertOptions.stream_stall_for,
        "--stream-stall-for",
        help="StreamConsumerStalled fires when a group has events waiting and finishes none "
        "(or none of its consumers reports) for this long.",
    ),
) -> None:
    """Write Prometheus alerting and recording rules for Berth's metrics.

    Alerts: HighLatency, HighErrorRate (server-side failures), HighClientErrorRate (invalid
    input), ModelAccuracyDrop, FeatureDrift, ModelNotLoaded, BerthTargetDown, and multi-window error-budget burn-rate alerts (ErrorBudgetBurnFast pages,
    ErrorBudgetBurnSlow files a ticket); for `berth stream run` consumers, StreamConsumerLagHigh
    and StreamConsumerStalled. Check the file with `promtool check rules FILE`.

    Example: berth observability alerts --slo-p99-ms 150 --slo-availability 0.995 --out berth-rules.yml
    """
    options = AlertOptions(
        slo_p99_ms=slo_p99_ms,
        slo_availability=slo_availability,
        error_rate=error_rate,
        client_error_rate=client_error_rate,
        accuracy_drop=accuracy_drop,
        accuracy_baseline=accuracy_baseline,
        accuracy_metrics=accuracy_metrics,
        drift_psi=drift_psi,
        rate_window=rate_window,
        for_override=hold,
        interval=interval,
        job=job,
        runbook_url=runbook_url,
        backup_max_age=backup_max_age,
        stream_lag=stream_lag,
        stream_lag_for=stream_lag_for,
        stream_stall_for=stream_stall_for,
    )
    document = build_rules(options)
    _emit(render_rules(document), out, "berth-rules.yml")
    if out is not None:
        names = rule_names(document)
        alerting = [n for n in names if ":" not in n]
        console.print(
            f"Wrote {len(alerting)} alerts and {len(names) - len(alerting)} recording rules "
            f"to {out}: {', '.join(alerting)}",
            highlight=False,
        )


@app.command("dashboard")
def dashboard(
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    title: str = typer.Option("Berth", "--title", help="Dashboard title."),
) -> None:
    """Write a Grafana dashboard (JSON) for Berth's metrics.

    Panels: request rate, errors, latency p50/p95/p99, traffic per version, batch sizes,
    models loaded, accuracy and feature drift; variables `model` and `version`. Import it in
    Grafana and pick the Prometheus data source for DS_PROMETHEUS.

    Example: berth observability dashboard --out berth-dashboard.json
    """
    built = build_dashboard(title)
    _emit(render_dashboard(built), out, "berth-dashboard.json")
    if out is not None:
        console.print(f"Wrote dashboard '{title}' ({len(built['panels'])} panels) to {out}")


@app.command("prometheus-config")
def prometheus_config(
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    target: list[str] = typer.Option(
        [],
        "--target",
        help=f"A Berth server HOST:PORT to scrape (repeatable; default 127.0.0.1:{DEFAULT_PORT}).",
    ),
    job: str = typer.Option("berth", "--job", help="Scrape job name."),
    scrape_interval: str = typer.Option("15s", "--scrape-interval", help="How often to scrape."),
    evaluation_interval: str = typer.Option(
        "15s", "--evaluation-interval", help="How often Prometheus evaluates the rules."
    ),
    scheme: str = typer.Option("http", "--scheme", help="http, or https for a TLS server."),
    rule_file: list[str] = typer.Option(
        [],
        "--rule-file",
        help="A rule file for Prometheus to load, e.g. from `berth observability alerts` "
        "(repeatable; relative paths are relative to the config file).",
    ),
) -> None:
    """Write a Prometheus configuration that scrapes Berth's /metrics.

    /metrics is open in Berth (no API key or bearer token), so the job needs no credentials.
    Check the file with `promtool check config FILE`.

    Example: berth observability prometheus-config --target 10.0.0.5:8321 --target 10.0.0.6:8321 --rule-file berth-rules.yml --out prometheus.yml
    """
    options = ScrapeOptions(
        targets=tuple(target) or ScrapeOptions().targets,
        job=job,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        scheme=scheme,
        rule_files=tuple(rule_file),
    )
    _emit(render_config(build_config(options)), out, "prometheus.yml")
    if out is not None:
        console.print(f"Wrote the Prometheus configuration to {out}")
