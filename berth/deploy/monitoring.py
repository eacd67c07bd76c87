"""Prometheus Operator objects: a ServiceMonitor that scrapes every replica, and Berth's rules.

The operator names a ServiceMonitor's scrape job after the Service, so the rules are built with
that job name (BerthTargetDown watches `up{job="<service>"}`). A Prometheus picks these objects
up only if its serviceMonitorSelector and ruleSelector match their labels (kube-prometheus-stack
selects `release: <its release>` by default): add that label in an overlay when yours does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from berth.deploy.kubernetes import metadata
from berth.deploy.plan import Plan
from berth.observability.alerts import AlertOptions, build_rules

API_VERSION = "monitoring.coreos.com/v1"
SCRAPE_INTERVAL = "15s"


def service_monitor(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": metadata(plan, plan.app),
        "spec": {
            "selector": {"matchLabels": plan.selector()},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "scheme": "http",
                    "interval": SCRAPE_INTERVAL,
                    "scrapeTimeout": "10s",
                }
            ],
        },
    }


def alert_options(plan: Plan, job: str) -> AlertOptions:
    """The rules' options for this bundle: its job, its backups, its consumer's lag limit."""
    options = AlertOptions(job=job, backup_max_age=plan.backup_max_age)
    if plan.options.stream is not None:
        # The lag the consumer's autoscaler cannot shed even at its largest size.
        options = replace(options, stream_lag=plan.options.stream.lag_alert_threshold)
    return options


def prometheus_rule(plan: Plan) -> dict[str, Any]:
    document = build_rules(alert_options(plan, job=plan.app))
    return {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": metadata(plan, plan.app),
        "spec": {"groups": document["groups"]},
    }
