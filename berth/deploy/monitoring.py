"""Prometheus Operator objects: a ServiceMonitor that scrapes every replica, and Berth's rules.

The operator names a ServiceMonitor's scrape job after the Service, so the rules are built with
that job name (BerthTargetDown watches `up{job="<service>"}`). A Prometheus picks these objects
up only if its serviceMonitorSelector and ruleSelector match their labels (kube-prometheus-stack
selects `release: <its release>` by default): add that label in an overlay when yours does.
"""

from __future__ import annotations

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


def prometheus_rule(plan: Plan) -> dict[str, Any]:
    document = build_rules(AlertOptions(job=plan.app, backup_max_age=plan.backup_max_age))
    return {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": metadata(plan, plan.app),
        "spec": {"groups": document["groups"]},
    }
