"""`berth observability`: alert rules, the Grafana dashboard and the scrape config.

The generated files are checked by Prometheus' own promtool: `check rules`, `check config`, and
`test rules` with the unit tests in tests/promtool/ (series that fire each alert, and series
that must not).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from berth.cli.observability import app
from berth.errors import InvalidInput
from berth.observability.alerts import AlertOptions, build_rules, render_rules, rule_names
from berth.observability.dashboard import DATASOURCE, build_dashboard
from berth.observability.prometheus_config import ScrapeOptions, build_config
from tests.conftest import require_service

FIXTURES = Path(__file__).parent / "promtool"
ALERTS = [
    "HighLatency",
    "HighErrorRate",
    "HighClientErrorRate",
    "ModelAccuracyDrop",
    "FeatureDrift",
    "ModelNotLoaded",
    "BerthTargetDown",
    "ErrorBudgetBurnFast",
    "ErrorBudgetBurnSlow",
    "StreamConsumerLagHigh",
    "StreamConsumerStalled",
]
WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
PANELS = [
    "Request rate",
    "Errors",
    "Latency p50 / p95 / p99",
    "Traffic per version",
    "Batch sizes",
    "Models loaded",
    "Accuracy (from feedback)",
    "Feature drift (PSI)",
]
runner = CliRunner()


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        require_service("promtool", "not on PATH; `apt-get install prometheus` provides it")
    assert found is not None
    return found


def run_promtool(promtool: str, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def alerts_by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in document["groups"] for r in g["rules"] if "alert" in r}


# rules as data -------------------------------------------------------------------------


def test_default_rules_name_every_alert_and_recording_rule() -> None:
    document = build_rules()
    assert rule_names(document) == [
        *ALERTS[:7],
        *(f"model:berth_prediction_server_errors:ratio_rate{w}" for w in WINDOWS),
        *ALERTS[7:],
    ]
    assert [g["name"] for g in document["groups"]] == ["berth-models", "berth-slo", "berth-streams"]
    for name, rule in alerts_by_name(document).items():
        assert rule["labels"]["severity"] in {"page", "critical", "ticket", "warning"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        assert rule["for"], name
    rules = alerts_by_name(document)
    assert rules["HighLatency"]["expr"].endswith("> 0.2")
    assert (
        "{{ $labels.model }} v{{ $labels.version }}"
        in rules["HighLatency"]["annotations"]["description"]
    )
    assert rules["HighErrorRate"]["labels"]["severity"] == "critical"
    # the page counts server-side failures only, as the error budget does; bad input only warns
    assert rules["HighErrorRate"]["expr"].startswith(
        'sum by (model, version) (rate(berth_prediction_errors_total{kind!="invalid_input"}[5m]))'
    )
    assert 'kind="invalid_input"' in rules["HighClientErrorRate"]["expr"]
    assert rules["HighClientErrorRate"]["labels"]["severity"] == "warning"
    assert rules["HighClientErrorRate"]["for"] == "15m"
    assert rules["ErrorBudgetBurnFast"]["labels"] == {"severity": "page", "slo": "availability"}
    assert rules["ErrorBudgetBurnSlow"]["labels"]["severity"] == "ticket"


def test_burn_rate_alerts_follow_the_multiwindow_pattern() -> None:
    rules = alerts_by_name(build_rules(AlertOptions(slo_availability=0.995)))
    fast, slow = rules["ErrorBudgetBurnFast"]["expr"], rules["ErrorBudgetBurnSlow"]["expr"]

    def pairs(expr: str) -> list[tuple[str, str, str]]:
        return re.findall(
            r"ratio_rate(\w+) > ([\d.]+) \* 0\.005 and \S+ratio_rate(\w+) > \2 \* 0\.005", expr
        )

    assert pairs(fast) == [("1h", "14.4", "5m"), ("6h", "6", "30m")]
    assert pairs(slow) == [("1d", "3", "2h"), ("3d", "1", "6h")]
    assert rules["ErrorBudgetBurnFast"]["for"] == "2m"
    assert rules["ErrorBudgetBurnSlow"]["for"] == "1h"
    assert (
        "99.5% availability objective" in rules["ErrorBudgetBurnFast"]["annotations"]["description"]
    )


def test_thresholds_and_timings_are_configurable() -> None:
    options = AlertOptions(
        slo_p99_ms=150,
        error_rate=0.02,
        client_error_rate=0.1,
        accuracy_drop=0.1,
        accuracy_baseline="7d",
        drift_psi=0.3,
        rate_window="2m",
        for_override="0s",
        interval="10s",
        job="berth-prod",
        runbook_url="https://runbooks.example.com/berth/",
    )
    document = build_rules(options)
    rules = alerts_by_name(document)
    assert rules["HighLatency"]["expr"].endswith("[2m]))) > 0.15")
    assert rules["HighErrorRate"]["expr"].endswith("[2m])) > 0.02")
    assert rules["HighClientErrorRate"]["expr"].endswith("[2m])) > 0.1")
    assert rules["ModelAccuracyDrop"]["expr"].startswith(
        'max_over_time(berth_model_accuracy{metric=~"accuracy|balanced_accuracy|f1|'
    )
    assert "[7d])" in rules["ModelAccuracyDrop"]["expr"]
    assert rules["ModelAccuracyDrop"]["expr"].endswith("> 0.1")
    assert rules["FeatureDrift"]["expr"] == "berth_feature_drift > 0.3"
    assert rules["BerthTargetDown"]["expr"] == 'up{job="berth-prod"} == 0'
    assert all("for" not in rule for rule in rules.values())
    assert {group["interval"] for group in document["groups"]} == {"10s"}
    assert (
        rules["HighErrorRate"]["annotations"]["runbook_url"]
        == "https://runbooks.example.com/berth#higherrorrate"
    )
    held = alerts_by_name(build_rules(AlertOptions(for_override="1m")))
    assert {rule["for"] for rule in held.values()} == {"1m"}


def test_stream_alerts_take_the_groups_lag_once_and_are_configurable() -> None:
    rules = alerts_by_name(build_rules())
    lag, stalled = rules["StreamConsumerLagHigh"], rules["StreamConsumerStalled"]
    # every consumer reports its group's lag: the largest report, never their sum
    assert lag["expr"] == "max by (source, group) (berth_stream_consumer_lag) > 10000"
    assert (lag["for"], lag["labels"]) == ("10m", {"severity": "warning"})
    assert (stalled["for"], stalled["labels"]) == ("10m", {"severity": "critical"})
    assert "increase(berth_stream_events_total[5m])" in stalled["expr"]
    assert "last_over_time(berth_stream_consumer_lag[1h])" in stalled["expr"]
    tuned = alerts_by_name(
        build_rules(
            AlertOptions(stream_lag=250, stream_lag_for="3m", stream_stall_for="30m",
                         rate_window="2m")
        )
    )  # fmt: skip
    assert tuned["StreamConsumerLagHigh"]["expr"].endswith("> 250")
    assert tuned["StreamConsumerLagHigh"]["for"] == "3m"
    assert tuned["StreamConsumerStalled"]["for"] == "30m"
    assert "[2m]" in tuned["StreamConsumerStalled"]["expr"]
    assert "for 30m" in tuned["StreamConsumerStalled"]["annotations"]["description"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (AlertOptions(slo_availability=1.0), "--slo-availability"),
        (AlertOptions(slo_availability=0), "--slo-availability"),
        (AlertOptions(slo_p99_ms=0), "--slo-p99-ms"),
        (AlertOptions(error_rate=1.5), "--error-rate"),
        (AlertOptions(client_error_rate=0), "--client-error-rate"),
        (AlertOptions(accuracy_drop=0), "--accuracy-drop"),
        (AlertOptions(drift_psi=-1), "--drift-psi"),
        (AlertOptions(for_override="soon"), "is not a duration"),
        (AlertOptions(rate_window="0m"), "--rate-window"),
        (AlertOptions(job='a"b'), "--job"),
        (AlertOptions(accuracy_metrics=""), "--accuracy-metrics"),
        (AlertOptions(interval="5 minutes"), "--interval: '5 minutes' is not a duration"),
        (AlertOptions(stream_lag=0), "--stream-lag must be at least 1"),
        (AlertOptions(stream_stall_for="later"), "--stream-stall-for: 'later' is not a duration"),
    ],
)
def test_bad_options_are_refused(options: AlertOptions, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        build_rules(options)


def test_rendered_rules_are_yaml_of_the_document() -> None:
    document = build_rules()
    text = render_rules(document)
    assert text.startswith("# Prometheus rules for Berth")
    assert yaml.safe_load(text) == document


# promtool ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        AlertOptions(),
        AlertOptions(slo_p99_ms=50, slo_availability=0.99, for_override="0s", interval="1s"),
        AlertOptions(runbook_url="https://example.com/runbook", rate_window="1m"),
    ],
    ids=["defaults", "strict-and-fast", "runbook"],
)
def test_generated_rules_pass_promtool_check(
    promtool: str, tmp_path: Path, options: AlertOptions
) -> None:
    rules = tmp_path / "berth-rules.yml"
    rules.write_text(render_rules(build_rules(options)))
    assert "SUCCESS: 18 rules found" in run_promtool(promtool, "check", "rules", str(rules))


def test_rule_unit_tests_pass_promtool_test(promtool: str, tmp_path: Path) -> None:
    """Each alert fires for the series meant to fire it, and stays quiet for the others."""
    result = runner.invoke(app, ["alerts", "--out", str(tmp_path / "berth-rules.yml")])
    assert result.exit_code == 0, result.output
    tests = sorted(FIXTURES.glob("*_test.yml"))
    assert [t.name for t in tests] == [
        "burn_rate_test.yml",
        "model_alerts_test.yml",
        "stream_alerts_test.yml",
    ]
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
    output = run_promtool(promtool, "test", "rules", *(t.name for t in tests), cwd=tmp_path)
    assert output.count("SUCCESS") == len(tests), output


def test_rule_unit_tests_catch_a_changed_threshold(promtool: str, tmp_path: Path) -> None:
    """The unit tests are not vacuous: rules with another latency objective fail them."""
    (tmp_path / "berth-rules.yml").write_text(
        render_rules(build_rules(AlertOptions(slo_p99_ms=600)))
    )
    shutil.copy(FIXTURES / "model_alerts_test.yml", tmp_path)
    done = subprocess.run(
        [promtool, "test", "rules", "model_alerts_test.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "alertname: HighLatency" in done.stdout + done.stderr


def test_stream_unit_tests_catch_a_sum_of_replicas_and_another_threshold(
    promtool: str, tmp_path: Path
) -> None:
    """Two replicas at 6000 each are 6000 behind, not 12000: a lower threshold fails the test,
    and so do rules that add the replicas' reports up."""
    shutil.copy(FIXTURES / "stream_alerts_test.yml", tmp_path)
    lower = render_rules(build_rules(AlertOptions(stream_lag=5000)))
    summed = render_rules(build_rules()).replace(
        "max by (source, group) (berth_stream_consumer_lag) > 10000",
        "sum by (source, group) (berth_stream_consumer_lag) > 10000",
    )
    assert summed != render_rules(build_rules())
    for rules in (lower, summed):
        (tmp_path / "berth-rules.yml").write_text(rules)
        done = subprocess.run(
            [promtool, "test", "rules", "stream_alerts_test.yml"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        assert done.returncode != 0
        assert "alertname: StreamConsumerLagHigh" in done.stdout + done.stderr


def test_prometheus_config_passes_promtool_check(promtool: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["alerts", "--out", str(tmp_path / "rules.yml")]).exit_code == 0
    config = tmp_path / "prometheus.yml"
    result = runner.invoke(
        app,
        [
            "prometheus-config",
            "--target",
            "127.0.0.1:18321",
            "--target",
            "berth-2.internal:8321",
            "--scrape-interval",
            "5s",
            "--rule-file",
            "rules.yml",
            "--out",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    output = run_promtool(promtool, "check", "config", str(config))
    assert "SUCCESS: 1 rule files found" in output
    assert "valid prometheus config file syntax" in output


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool has no offline query check, so every panel query becomes a recording rule."""
    exprs = [t["expr"] for p in build_dashboard()["panels"] for t in p["targets"]]
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": expr.replace("$__rate_interval", "1m")
            .replace("$model", ".*")
            .replace("$version", ".*"),
        }
        for index, expr in enumerate(exprs)
    ]
    file = tmp_path / "dashboard-queries.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(
        promtool, "check", "rules", str(file)
    )


# scrape config and dashboard as data ----------------------------------------------------


def test_prometheus_config_document() -> None:
    config = build_config(
        ScrapeOptions(
            targets=("127.0.0.1:18321",),
            scrape_interval="1s",
            evaluation_interval="1s",
            rule_files=("rules.yml",),
        )
    )
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert config["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "berth"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:18321"]}]
    assert "authorization" not in job
    assert "rule_files" not in build_config()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ScrapeOptions(targets=("localhost",)), "is not HOST:PORT"),
        (ScrapeOptions(targets=()), "at least one --target"),
        (ScrapeOptions(scheme="ftp"), "--scheme"),
        (ScrapeOptions(scrape_interval="0s"), "--scrape-interval"),
        (ScrapeOptions(job="two words"), "--job"),
    ],
)
def test_bad_scrape_options_are_refused(options: ScrapeOptions, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        build_config(options)


def test_dashboard_has_the_panels_and_a_valid_structure() -> None:
    dashboard = json.loads(json.dumps(build_dashboard()))
    assert dashboard["schemaVersion"] == 39
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panels = dashboard["panels"]
    assert [p["title"] for p in panels] == PANELS
    assert len({p["id"] for p in panels}) == len(panels)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert (
            panel["datasource"] == DATASOURCE == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        )
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert "berth_" in target["expr"]
            assert target["datasource"] == DATASOURCE
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"model", "version"}
    assert variables["version"]["query"]["query"] == (
        'label_values(berth_predictions_total{model=~"$model"}, version)'
    )
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    latency = by_title["Latency p50 / p95 / p99"]
    assert all(f"histogram_quantile({q}," in latency for q in ("0.5", "0.95", "0.99"))
    assert "berth_batch_size_bucket" in by_title["Batch sizes"]
    assert "berth_model_accuracy" in by_title["Accuracy (from feedback)"]
    assert "berth_feature_drift" in by_title["Feature drift (PSI)"]
    assert "group_left" in by_title["Traffic per version"]
    assert 'status="error"' in by_title["Errors"]


# the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["alerts", "dashboard", "prometheus-config"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert f"Example: berth observability {command}" in result.output


def test_cli_writes_files_and_prints_to_stdout(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    result = runner.invoke(
        app,
        [
            "alerts",
            "--slo-p99-ms",
            "120",
            "--slo-availability",
            "0.99",
            "--client-error-rate",
            "0.03",
            "--out",
            str(rules),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 11 alerts and 7 recording rules" in result.output
    written = alerts_by_name(yaml.safe_load(rules.read_text()))
    assert written["HighLatency"]["expr"].endswith("> 0.12")
    assert written["HighClientErrorRate"]["expr"].endswith("> 0.03")
    assert "14.4 * 0.01" in written["ErrorBudgetBurnFast"]["expr"]

    dashboard = tmp_path / "dashboard.json"
    result = runner.invoke(app, ["dashboard", "--title", "Models", "--out", str(dashboard)])
    assert result.exit_code == 0, result.output
    assert json.loads(dashboard.read_text())["title"] == "Models"

    printed = runner.invoke(app, ["prometheus-config", "--target", "10.0.0.5:8321"])
    assert printed.exit_code == 0, printed.output
    assert "/metrics is open" in printed.output
    assert yaml.safe_load(printed.output)["scrape_configs"][0]["static_configs"] == [
        {"targets": ["10.0.0.5:8321"]}
    ]
    assert yaml.safe_load(runner.invoke(app, ["alerts"]).output) == build_rules()
    tuned = runner.invoke(app, ["alerts", "--stream-lag", "500", "--stream-stall-for", "20m"])
    assert tuned.exit_code == 0, tuned.output
    assert yaml.safe_load(tuned.output) == build_rules(
        AlertOptions(stream_lag=500, stream_stall_for="20m")
    )


def test_cli_errors_are_domain_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["alerts", "--slo-availability", "99.9"])
    assert isinstance(result.exception, InvalidInput)
    assert "between 0 and 1" in result.exception.message
    result = runner.invoke(app, ["dashboard", "--out", str(tmp_path / "missing" / "d.json")])
    assert isinstance(result.exception, InvalidInput)
    assert "does not exist" in result.exception.message
    result = runner.invoke(app, ["prometheus-config", "--out", str(tmp_path)])
    assert isinstance(result.exception, InvalidInput)
    assert "is a directory" in result.exception.message
