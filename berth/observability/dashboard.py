"""A Grafana dashboard for Berth's metrics, built as data (Grafana's JSON model).

Import it in Grafana (Dashboards → New → Import): Grafana asks for the Prometheus data source
that fills `${DS_PROMETHEUS}`. The `model` and `version` variables filter every panel whose
metric carries those labels.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_VERSION = 39
DASHBOARD_UID = "berth-overview"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SELECTOR = 'model=~"$model", version=~"$version"'
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        "refId": ref,
    }


def _panel(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    unit: str,
    grid: tuple[int, int, int, int],
    kind: str = "timeseries",
    **defaults: Any,
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            _target(expr, legend, chr(ord("A") + index))
            for index, (expr, legend) in enumerate(targets)
        ],
    }


def _latency(quantile: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (model, version, le) "
        f"(rate(berth_prediction_duration_seconds_bucket{{{SELECTOR}}}[{RATE}])))"
    )


def panels() -> list[dict[str, Any]]:
    by_version = "{{model}} v{{version}}"
    return [
        _panel(
            "Request rate",
            "Predictions per second, by model version and outcome.",
            [
                (
                    f"sum by (model, version, status) "
                    f"(rate(berth_predictions_total{{{SELECTOR}}}[{RATE}]))",
                    "{{model}} v{{version}} {{status}}",
                )
            ],
            "reqps",
            (0, 0, 12, 8),
        ),
        _panel(
            "Errors",
            "Share of failed predictions, and failures per second by kind "
            "(invalid_input: the client's fault; internal: the model's).",
            [
                (
                    f'sum by (model, version) (rate(berth_predictions_total{{status="error", '
                    f"{SELECTOR}}}[{RATE}])) / sum by (model, version) "
                    f"(rate(berth_predictions_total{{{SELECTOR}}}[{RATE}]))",
                    f"{by_version} error ratio",
                ),
                (
                    f"sum by (model, version, kind) "
                    f"(rate(berth_prediction_errors_total{{{SELECTOR}}}[{RATE}]))",
                    "{{model}} v{{version}} {{kind}}/s",
                ),
            ],
            "percentunit",
            (12, 0, 12, 8),
        ),
        _panel(
            "Latency p50 / p95 / p99",
            "Prediction latency quantiles from the duration histogram.",
            [
                (_latency("0.5"), f"{by_version} p50"),
                (_latency("0.95"), f"{by_version} p95"),
                (_latency("0.99"), f"{by_version} p99"),
            ],
            "s",
            (0, 8, 12, 8),
        ),
        _panel(
            "Traffic per version",
            "Share of each model's predictions answered by each version: watch a rollout "
            "or a canary move traffic.",
            [
                (
                    f"sum by (model, version) (rate(berth_predictions_total{{{SELECTOR}}}[{RATE}]))"
                    f" / ignoring (version) group_left sum by (model) "
                    f'(rate(berth_predictions_total{{model=~"$model"}}[{RATE}]))',
                    by_version,
                )
            ],
            "percentunit",
            (12, 8, 12, 8),
            custom={"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30},
        ),
        _panel(
            "Batch sizes",
            "Rows per prediction request (median and p95), and requests in flight.",
            [
                (
                    f"histogram_quantile(0.5, sum by (model, version, le) "
                    f"(rate(berth_batch_size_bucket{{{SELECTOR}}}[{RATE}])))",
                    f"{by_version} p50 rows",
                ),
                (
                    f"histogram_quantile(0.95, sum by (model, version, le) "
                    f"(rate(berth_batch_size_bucket{{{SELECTOR}}}[{RATE}])))",
                    f"{by_version} p95 rows",
                ),
                ("sum(berth_requests_in_flight)", "in flight"),
            ],
            "short",
            (0, 16, 12, 8),
        ),
        _panel(
            "Models loaded",
            "1 while a version is loaded in a Berth process.",
            [(f"berth_model_loaded{{{SELECTOR}}}", "{{model}} v{{version}} {{instance}}")],
            "short",
            (12, 16, 12, 8),
        ),
        _panel(
            "Accuracy (from feedback)",
            "Quality metrics computed from the feedback clients send for past predictions.",
            [
                (
                    f"berth_model_accuracy{{{SELECTOR}}}",
                    "{{model}} v{{version}} {{metric}}",
                )
            ],
            "percentunit",
            (0, 24, 12, 8),
            min=0,
            max=1,
        ),
        _panel(
            "Feature drift (PSI)",
            "Population stability index per feature; over 0.25 is usually a real shift.",
            [
                (
                    f"berth_feature_drift{{{SELECTOR}}}",
                    "{{model}} v{{version}} {{feature}}",
                )
            ],
            "short",
            (12, 24, 12, 8),
            thresholds={
                "mode": "absolute",
                "steps": [
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 0.1},
                    {"color": "red", "value": 0.25},
                ],
            },
        ),
    ]


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def build_dashboard(title: str = "Berth") -> dict[str, Any]:
    """Grafana's export format: `__inputs` names the data source asked for on import."""
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes Berth's /metrics",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "uid": DASHBOARD_UID,
        "title": title,
        "description": "Traffic, errors, latency, versions, batches, accuracy and drift of "
        "the models Berth serves. Generated by `berth observability dashboard`.",
        "tags": ["berth", "mlops"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                _variable("model", "label_values(berth_predictions_total, model)"),
                _variable(
                    "version", 'label_values(berth_predictions_total{model=~"$model"}, version)'
                ),
            ]
        },
        "panels": [{"id": index, **panel} for index, panel in enumerate(panels(), start=1)],
    }


def render_dashboard(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2) + "\n"
