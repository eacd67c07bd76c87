"""Prometheus alerting and recording rules for Berth's metrics, built as data.

`build_rules(AlertOptions(...))` returns the rule-file document (plain dicts and lists);
`render_rules` turns it into YAML for `promtool check rules` and Prometheus' `rule_files`.

Alerts (severity label: `page` wakes someone, `ticket`/`warning` waits for working hours):

- HighLatency          p99 prediction latency of a version over the objective
- HighErrorRate        share of predictions of a version that fail on the server side (the
                       model raised, a timeout, overload) over a threshold: critical, because
                       its runbook is "roll back"; a client's bad input is not counted
- HighClientErrorRate  share of predictions of a version refused as invalid input (400s) over
                       a threshold: a warning, since rolling back cannot fix a client, unless
                       the new version's signature is what clients now break
- ModelAccuracyDrop    accuracy from feedback fell by more than a margin below its recent best
- FeatureDrift         a feature's drift score (PSI) over the threshold
- ModelNotLoaded       a Berth instance knows a model but has no version of it loaded
- BerthTargetDown      Prometheus cannot scrape a Berth instance
- ErrorBudgetBurnFast  availability error budget burning 14.4x (1h & 5m) or 6x (6h & 30m): page
- ErrorBudgetBurnSlow  availability error budget burning 3x (1d & 2h) or 1x (3d & 6h): ticket
- StreamConsumerLagHigh  a stream consumer group is more than `stream_lag` events behind
- StreamConsumerStalled  a stream consumer group has events waiting and finishes none, or its
                       consumers all went away leaving events behind
- BackupTooOld         (only with `backup_max_age`) the newest succeeded backup is older than
                       that, or Berth has been up that long and no backup ever succeeded

The burn-rate alerts follow the multiwindow, multi-burn-rate pattern of the Google SRE workbook
("Alerting on SLOs"). Their error ratios are recording rules per model, over server-side
failures only: a request refused as invalid input does not spend the server's error budget.
HighErrorRate counts the same failures, per version.

The stream alerts read the consumer's gauges (`berth stream run --metrics-port`). Every consumer
of a group reports the lag of the whole group, so the alerts take the largest report per group
(`max by`), never the sum. StreamConsumerStalled has two branches: lag and no finished event
over the rate window (matched per source and group), or no consumer of the group reporting while the last lag it reported was above 0 (every
consumer crashed, was evicted or cannot reach the broker's metrics, and work is waiting).

BackupTooOld is two rules of one name, told apart by their `reason` label (stale, never).
`berth_backup_last_success_timestamp_seconds` is absent
until a backup has ever succeeded (a made-up 0 would plot as 1970), so "too old" cannot see a
registry never backed up; `absent()` alone would also fire whenever Berth is down, which
BerthTargetDown already says. The second rule fires when Berth's targets are up but none reports
a backup time, held for the same maximum age: a new deployment gets one period to make its
first backup before anyone is told.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from berth.durations import parse_duration
from berth.errors import InvalidInput

if TYPE_CHECKING:  # PyYAML is imported when YAML is written: `berth --help` shows AlertOptions
    import yaml

RULES_VERSION = 1

#: (name, severity, [(long window, short window, burn-rate factor, for)]). One alert per
#: severity; it waits the `for` of its first (fastest) pair, as the workbook's tables do.
BURN_RATE_ALERTS: tuple[tuple[str, str, tuple[tuple[str, str, float, str], ...]], ...] = (
    ("ErrorBudgetBurnFast", "page", (("1h", "5m", 14.4, "2m"), ("6h", "30m", 6.0, "15m"))),
    ("ErrorBudgetBurnSlow", "ticket", (("1d", "2h", 3.0, "1h"), ("3d", "6h", 1.0, "1h"))),
)
BURN_RATE_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

#: Failures that spend the availability budget: every kind but the client's own bad input.
SERVER_ERRORS = 'berth_prediction_errors_total{kind!="invalid_input"}'
#: Requests refused because the client sent what the signature does not accept (HTTP 400).
CLIENT_ERRORS = 'berth_prediction_errors_total{kind="invalid_input"}'


def error_ratio_record(window: str) -> str:
    """Name of the recording rule holding the per-model server error ratio over `window`."""
    return f"model:berth_prediction_server_errors:ratio_rate{window}"


@dataclass(frozen=True)
class AlertOptions:
    """Thresholds and timings; every `*_for` may be overridden at once with `for_override`."""

    slo_p99_ms: float = 200.0
    slo_availability: float = 0.999
    error_rate: float = 0.05
    #: Lower than `error_rate`: it only warns, and a client sending a few bad rows in every
    #: twenty requests is worth telling its owner about before it grows.
    client_error_rate: float = 0.02
    accuracy_drop: float = 0.05
    accuracy_baseline: str = "1d"
    #: Feedback metrics where higher is better; a drop of an error metric (mae) is good news.
    accuracy_metrics: str = "accuracy|balanced_accuracy|f1|precision|recall|auc|roc_auc|r2"
    drift_psi: float = 0.25
    rate_window: str = "5m"
    latency_for: str = "10m"
    error_rate_for: str = "5m"
    #: Longer than `error_rate_for`: a client deploying a bad build for a few minutes is not
    #: a trend, and nobody is woken up for this one.
    client_error_rate_for: str = "15m"
    accuracy_for: str = "30m"
    drift_for: str = "30m"
    not_loaded_for: str = "5m"
    down_for: str = "2m"
    for_override: str | None = None
    job: str = "berth"
    interval: str | None = None
    runbook_url: str | None = None
    #: How old the newest backup may get, e.g. "26h" for daily backups (a day and some slack
    #: for a slow run); None: no backup alert (a registry nobody backs up would always fire).
    backup_max_age: str | None = None
    backup_for: str = "5m"
    #: Events a stream consumer group may be behind; `berth build` sets it to what the
    #: consumer's autoscaler can absorb at its largest size.
    stream_lag: int = 10_000
    stream_lag_for: str = "10m"
    #: How long a group may have events waiting and finish none.
    stream_stall_for: str = "10m"

    def validate(self) -> None:
        if not 0 < self.slo_availability < 1:
            raise InvalidInput(
                f"--slo-availability must lie strictly between 0 and 1 (got "
                f"{self.slo_availability:g}); write 0.999 for 99.9%"
            )
        if self.slo_p99_ms <= 0:
            raise InvalidInput(f"--slo-p99-ms must be positive (got {self.slo_p99_ms:g})")
        for flag, value in (
            ("--error-rate", self.error_rate),
            ("--client-error-rate", self.client_error_rate),
            ("--accuracy-drop", self.accuracy_drop),
        ):
            if not 0 < value < 1:
                raise InvalidInput(f"{flag} must lie strictly between 0 and 1 (got {value:g})")
        if self.drift_psi <= 0:
            raise InvalidInput(f"--drift-psi must be positive (got {self.drift_psi:g})")
        if self.stream_lag < 1:
            raise InvalidInput(f"--stream-lag must be at least 1 event (got {self.stream_lag})")
        holds = (
            "latency_for",
            "error_rate_for",
            "client_error_rate_for",
            "accuracy_for",
            "drift_for",
            "not_loaded_for",
        )
        durations = {
            "--rate-window": self.rate_window,
            "--accuracy-baseline": self.accuracy_baseline,
            "--for": self.for_override,
            "--interval": self.interval,
            "--backup-max-age": self.backup_max_age,
            "--stream-lag-for": self.stream_lag_for,
            "--stream-stall-for": self.stream_stall_for,
            **{name: getattr(self, name) for name in (*holds, "down_for", "backup_for")},
        }
        for flag, text in durations.items():
            if text is None:
                continue
            try:
                seconds = parse_duration(text).total_seconds()
            except InvalidInput as exc:
                raise InvalidInput(f"{flag}: {exc.message}") from exc
            if seconds == 0 and flag in (
                "--rate-window",
                "--accuracy-baseline",
                "--interval",
                "--backup-max-age",
            ):
                raise InvalidInput(f"{flag} must be longer than 0s (got {text})")
        if not self.accuracy_metrics or '"' in self.accuracy_metrics:
            raise InvalidInput(
                f"--accuracy-metrics must be metric names joined by | (got {self.accuracy_metrics!r})"
            )
        if not self.job or '"' in self.job or "\\" in self.job:
            raise InvalidInput(f"--job must be a plain Prometheus job name (got {self.job!r})")

    def hold(self, default: str) -> str:
        return self.for_override if self.for_override is not None else default


def _alert(
    name: str,
    expr: str,
    hold: str,
    severity: str,
    summary: str,
    description: str,
    runbook: str,
    options: AlertOptions,
    **labels: str,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if parse_duration(hold).total_seconds() > 0:
        rule["for"] = hold
    rule["labels"] = {"severity": severity, **labels}
    annotations = {"summary": summary, "description": description, "runbook": runbook}
    if options.runbook_url:
        annotations["runbook_url"] = f"{options.runbook_url.rstrip('/')}#{name.lower()}"
    rule["annotations"] = annotations
    return rule


def _percent(value: float) -> str:
    return f"{value * 100:g}%"


def _share_of_predictions(errors: str, window: str, threshold: float) -> str:
    """Per version: the share of predictions counted by the error selector `errors`."""
    return (
        f"sum by (model, version) (rate({errors}[{window}]))"
        f" / sum by (model, version) (rate(berth_predictions_total[{window}]))"
        f" > {threshold:g}"
    )


def model_alerts(options: AlertOptions) -> list[dict[str, Any]]:
    """Alerts per model version: latency, errors, accuracy, drift, loading, scraping."""
    window = options.rate_window
    seconds = options.slo_p99_ms / 1000
    version = "{{ $labels.model }} v{{ $labels.version }}"
    accuracy = f'berth_model_accuracy{{metric=~"{options.accuracy_metrics}"}}'
    return [
        _alert(
            "HighLatency",
            "histogram_quantile(0.99, sum by (model, version, le) "
            f"(rate(berth_prediction_duration_seconds_bucket[{window}]))) > {seconds:g}",
            options.hold(options.latency_for),
            "warning",
            f"{version}: p99 latency over {options.slo_p99_ms:g}ms",
            f"The 99th percentile prediction latency of {version} is "
            f"{{{{ $value | humanizeDuration }}}} over the last {window} "
            f"(objective {options.slo_p99_ms:g}ms).",
            "Look for large batches (berth_batch_size) and saturation "
            "(berth_requests_in_flight); add workers, or send fewer rows per request.",
            options,
        ),
        _alert(
            "HighErrorRate",
            _share_of_predictions(SERVER_ERRORS, window, options.error_rate),
            options.hold(options.error_rate_for),
            "critical",
            f"{version}: {{{{ $value | humanizePercentage }}}} of predictions fail on the server",
            f"{{{{ $value | humanizePercentage }}}} of the predictions of {version} failed on "
            "the server side (model errors, timeouts, overload; bad input from clients is not "
            f"counted) over the last {window} (threshold {_percent(options.error_rate)}).",
            "berth_prediction_errors_total by kind tells failures of the model (internal) from "
            "requests the server refused or timed out (rejected); read the server log, and "
            "move the alias back with `berth models alias` if a new version broke.",
            options,
        ),
        _alert(
            "HighClientErrorRate",
            _share_of_predictions(CLIENT_ERRORS, window, options.client_error_rate),
            options.hold(options.client_error_rate_for),
            "warning",
            f"{version}: {{{{ $value | humanizePercentage }}}} of predictions refused as "
            "invalid input",
            f"{{{{ $value | humanizePercentage }}}} of the predictions of {version} were "
            "refused as invalid input (HTTP 400: the client sent what the signature does not "
            f"accept) over the last {window} (threshold {_percent(options.client_error_rate)}).",
            "A client breaks the signature: the 400 responses and the server log name the "
            "field; tell the client owners. If it began when the version changed, the new "
            "signature refuses what clients send: move the alias back with `berth models alias`.",
            options,
        ),
        _alert(
            "ModelAccuracyDrop",
            f"max_over_time({accuracy}[{options.accuracy_baseline}])"
            f" - {accuracy} > {options.accuracy_drop:g}",
            options.hold(options.accuracy_for),
            "warning",
            f"{version}: {{{{ $labels.metric }}}} dropped by {{{{ printf `%.2f` $value }}}}",
            f"The {{{{ $labels.metric }}}} of {version}, measured from feedback, is "
            f"{{{{ printf `%.2f` $value }}}} below its best of the last "
            f"{options.accuracy_baseline} (allowed drop {options.accuracy_drop:g}).",
            "Compare berth_feature_drift for the version; retrain on recent data and "
            "register the new version, or move the alias back to the previous one.",
            options,
        ),
        _alert(
            "FeatureDrift",
            f"berth_feature_drift > {options.drift_psi:g}",
            options.hold(options.drift_for),
            "warning",
            f"{version}: feature {{{{ $labels.feature }}}} drifted",
            f"Feature {{{{ $labels.feature }}}} of {version} has a drift score (PSI) of "
            f"{{{{ printf `%.2f` $value }}}}, over {options.drift_psi:g}.",
            "Check the upstream source of the feature for a change; if the new "
            "distribution is real, retrain and register a new version.",
            options,
        ),
        _alert(
            "ModelNotLoaded",
            "max by (job, instance, model) (berth_model_loaded) == 0",
            options.hold(options.not_loaded_for),
            "critical",
            "{{ $labels.model }}: no version loaded on {{ $labels.instance }}",
            "Berth at {{ $labels.instance }} serves {{ $labels.model }} but has no version "
            "of it loaded; its predictions fail.",
            "Read the server log for the load error; `berth models show` the version the "
            "alias points at, and check its artifact is reachable.",
            options,
        ),
        _alert(
            "BerthTargetDown",
            f'up{{job="{options.job}"}} == 0',
            options.hold(options.down_for),
            "critical",
            "Berth at {{ $labels.instance }} is down",
            "Prometheus cannot scrape /metrics of Berth at {{ $labels.instance }}.",
            "Check the process (`berth serve`) and its host; /ready tells whether it is "
            "still loading models.",
            options,
        ),
    ]


def recording_rules() -> list[dict[str, Any]]:
    """Per-model server error ratios over every window a burn-rate alert reads."""
    return [
        {
            "record": error_ratio_record(window),
            "expr": f"sum by (model) (rate({SERVER_ERRORS}[{window}]))"
            f" / sum by (model) (rate(berth_predictions_total[{window}]))",
        }
        for window in BURN_RATE_WINDOWS
    ]


def burn_rate_alerts(options: AlertOptions) -> list[dict[str, Any]]:
    budget = 1 - options.slo_availability
    objective = _percent(options.slo_availability)
    rules = []
    for name, severity, pairs in BURN_RATE_ALERTS:
        conditions = []
        for long, short, factor, _hold in pairs:
            threshold = f"{factor:g} * {budget:.6g}"
            conditions.append(
                f"({error_ratio_record(long)} > {threshold}"
                f" and {error_ratio_record(short)} > {threshold})"
            )
        windows = ", ".join(f"{long}/{short} at {factor:g}x" for long, short, factor, _ in pairs)
        speed = "fast" if severity == "page" else "slowly"
        rules.append(
            _alert(
                name,
                "\nor\n".join(conditions),
                options.hold(pairs[0][3]),
                severity,
                f"{{{{ $labels.model }}}}: error budget burning {speed}",
                f"Server-side failures of {{{{ $labels.model }}}} spend the error budget of "
                f"its {objective} availability objective too fast ({windows}); "
                f"{{{{ $value | humanizePercentage }}}} of predictions fail over the long window.",
                "HighErrorRate names the failing version; roll the alias back first, "
                "investigate after.",
                options,
                slo="availability",
            )
        )
    return rules


def backup_alerts(options: AlertOptions) -> list[dict[str, Any]]:
    """BackupTooOld: the newest backup is too old, or there never was one (see the module)."""
    assert options.backup_max_age is not None
    age = options.backup_max_age
    seconds = parse_duration(age).total_seconds()
    metric = f'berth_backup_last_success_timestamp_seconds{{job="{options.job}"}}'
    runbook = (
        "`berth jobs list` shows the backup jobs and why the last ones failed (`berth jobs "
        "show ID`); check the backup CronJob or `berth scheduler`, and the destinations; run "
        "`berth backup create --to ...` by hand once it is fixed."
    )
    return [
        _alert(
            "BackupTooOld",
            f"time() - max by (job) ({metric}) > {seconds:g}",
            options.hold(options.backup_for),
            "ticket",
            "The newest registry backup is {{ $value | humanizeDuration }} old",
            f"The newest backup of the registry behind {{{{ $labels.job }}}} that reached every "
            f"destination ended {{{{ $value | humanizeDuration }}}} ago (allowed {age}).",
            runbook,
            options,
            reason="stale",
        ),
        _alert(
            "BackupTooOld",
            f'count by (job) (up{{job="{options.job}"}} == 1) unless on (job) '
            f"count by (job) ({metric})",
            options.hold(age),
            "ticket",
            "The registry has never been backed up",
            f"Berth ({{{{ $labels.job }}}}) has been up for {age} and no backup of its registry "
            "has ever succeeded.",
            runbook,
            options,
            reason="never",
        ),
    ]


STREAM_LAG = "max by (source, group) (berth_stream_consumer_lag)"
"""The lag of each consumer group: every consumer reports the group's, so the largest report."""


def stream_alerts(options: AlertOptions) -> list[dict[str, Any]]:
    """StreamConsumerLagHigh and StreamConsumerStalled (see the module)."""
    group = "{{ $labels.group }}"
    source = "{{ $labels.source }}"
    stall = options.stream_stall_for
    finished = (
        f"sum by (source, group) (increase(berth_stream_events_total[{options.rate_window}])) > 0"
    )
    return [
        _alert(
            "StreamConsumerLagHigh",
            f"{STREAM_LAG} > {options.stream_lag}",
            options.hold(options.stream_lag_for),
            "warning",
            f"Consumer group {group} is {{{{ $value }}}} events behind on {source}",
            f"Consumer group {group} of {source} has {{{{ $value }}}} events not yet "
            f"acknowledged (threshold {options.stream_lag}) for {options.stream_lag_for}.",
            "Compare berth_stream_throughput_events_per_second with the rate events arrive; "
            "add consumer replicas (at most one per partition on Kafka) or raise --batch-size; "
            "check the consumer log for broker errors and dead letters.",
            options,
        ),
        _alert(
            "StreamConsumerStalled",
            f"({STREAM_LAG} > 0 unless on (source, group) {finished})\nor\n"
            f"(max by (source, group) (last_over_time(berth_stream_consumer_lag[1h])) > 0"
            f" unless on (source, group) {STREAM_LAG})",
            options.hold(stall),
            "critical",
            f"Consumer group {group} finishes no events of {source}",
            f"Consumer group {group} of {source} has {{{{ $value }}}} events waiting and has "
            f"finished none for {stall}, or none of its consumers reports any more.",
            "Check the consumer pods (crash loop, OOM, a model that does not load) and their "
            "log: a broker that refuses writes to the sink or the dead-letter stream stops the "
            "consumer from acknowledging anything.",
            options,
        ),
    ]


def build_rules(options: AlertOptions | None = None) -> dict[str, Any]:
    """The rule-file document: one group of alerts per concern, and the recording rules."""
    options = options or AlertOptions()
    options.validate()
    groups: list[dict[str, Any]] = [
        {"name": "berth-models", "rules": model_alerts(options)},
        # Rules of a group run in order: the alerts read this evaluation's ratios, not the last.
        {"name": "berth-slo", "rules": [*recording_rules(), *burn_rate_alerts(options)]},
        {"name": "berth-streams", "rules": stream_alerts(options)},
    ]
    if options.backup_max_age is not None:
        groups.append({"name": "berth-backups", "rules": backup_alerts(options)})
    if options.interval is not None:
        for group in groups:
            group["interval"] = options.interval
    return {"groups": groups}


def rule_names(document: dict[str, Any]) -> list[str]:
    return [
        rule.get("alert") or rule["record"]
        for group in document["groups"]
        for rule in group["rules"]
    ]


@functools.cache
def _dumper() -> type[yaml.SafeDumper]:
    """A SafeDumper writing multi-line strings (long PromQL expressions) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _string)
    return Dumper


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def dump_yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.dump(document, Dumper=_dumper(), sort_keys=False, width=1000, allow_unicode=True)


def render_rules(document: dict[str, Any]) -> str:
    header = (
        "# Prometheus rules for Berth, generated by `berth observability alerts`.\n"
        "# Check: promtool check rules FILE. Regenerate rather than edit by hand.\n"
    )
    return header + dump_yaml(document)
