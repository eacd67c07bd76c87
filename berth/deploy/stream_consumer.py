"""Kubernetes objects of the stream consumer a bundle runs beside the server (`--stream-source`).

The consumer is `berth stream run` in the server's image, with the server's ConfigMap and
Secret: it reads the same registry, and with a baked model runs `--bundle` on the same folder,
so it scores with the version the servers serve. Broker passwords in the URLs are lifted into
the Secret (`$(BERTH_STREAM_SECRET_n)`, expanded by Kubernetes), never written into a manifest.

It serves Prometheus metrics on its own port, which also makes its probes: the metrics server
starts only once the brokers are joined and the model is loaded, so readiness means consuming.
No Service sends it traffic; a headless Service gives the ServiceMonitor its pods.

Scaling is on lag, as Kubernetes' "autoscaling on metrics not related to Kubernetes objects"
(queue length) example does: an External metric, the group's `berth_stream_consumer_lag`, with
an AverageValue target of events per replica, so the autoscaler runs ceil(lag / target)
replicas. Every consumer of the group reports the whole group's lag, so the adapter rule takes
the largest report per group (`max by (group)`), never their sum. The external metrics API needs
an adapter: `prometheus_adapter_values` is the rule for prometheus-adapter's Helm chart.
"""

from __future__ import annotations

from typing import Any

from berth.deploy.cronjobs import ScheduleSecrets
from berth.deploy.kubernetes import metadata, pod_spec, quantity, resources
from berth.deploy.plan import BIND_ALL, BUNDLE_DIR, Plan
from berth.deploy.stream_options import METRICS_PORT, ConsumerOptions

COMPONENT = "stream"
LAG_METRIC = "berth_stream_consumer_lag"
VARIABLE_PREFIX = "BERTH_STREAM"  # lifted passwords: BERTH_STREAM_SECRET_1, ...
DRAIN_SECONDS = 90
"""Grace after SIGTERM: the consumer finishes the batch in flight (predict, write, acknowledge)
and reports its totals; a batch taking longer is cut off and delivered again (at least once)."""
SCALE_DOWN_WINDOW = 300
"""Seconds of lower lag before replicas go: on Kafka each change pauses the group to rebalance."""


def consumer(plan: Plan) -> ConsumerOptions:
    stream = plan.options.stream
    if stream is None:
        raise AssertionError("no --stream-source: the bundle has no stream consumer")
    return stream


def name(plan: Plan) -> str:
    return f"{plan.app}-{COMPONENT}"


def command(plan: Plan, secrets: ScheduleSecrets) -> tuple[list[str], list[str]]:
    """`berth stream run ...` with passwords lifted into Secret variables, and those variables."""
    stream = consumer(plan)
    if plan.model_source == "bake":
        model = ["--bundle", BUNDLE_DIR]
        if plan.subject.version.pickle_trusted:  # trusted when registered; vouched again
            model.append("--trust-pickle")
    else:
        model = list(plan.subject.served[:1])  # a model subject serves one reference
    args = [*model, "--source", stream.source, "--sink", stream.sink]
    if stream.dead_letter is not None:
        args += ["--dead-letter", stream.dead_letter]
    args += [
        "--group", plan.stream_group or "",
        "--batch-size", str(stream.batch_size),
        "--metrics-host", BIND_ALL,
        "--metrics-port", str(METRICS_PORT),
    ]  # fmt: skip
    lifted, variables = secrets.lift_as(VARIABLE_PREFIX, args)
    return ["berth", "stream", "run", *lifted], variables


def _probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/metrics", "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def deployment(plan: Plan, secrets: ScheduleSecrets) -> dict[str, Any]:
    run, variables = command(plan, secrets)
    container: dict[str, Any] = {
        "name": COMPONENT,
        "command": run,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        # The same model in memory as a server replica: the same requests and limits.
        "resources": resources(plan),
        # Joining the brokers, installing a baked bundle (or waiting for a server to) and
        # loading the model come before the metrics port opens.
        "startupProbe": _probe(5, 60),
        "livenessProbe": _probe(10, 3),
        "readinessProbe": _probe(10, 3),
    }
    if variables:
        container["env"] = [
            {"name": v, "valueFrom": {"secretKeyRef": {"name": plan.secret_name, "key": v}}}
            for v in variables
        ]
    spec = pod_spec(plan, container)
    spec["terminationGracePeriodSeconds"] = DRAIN_SECONDS
    spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": plan.selector(COMPONENT)},
        }
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(plan, name(plan), COMPONENT),
        # No `replicas`: the autoscaler owns the count.
        "spec": {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": plan.selector(COMPONENT)},
            # One consumer fewer for a moment rather than one more: on Kafka an extra member
            # beyond the partitions would only idle, and each change rebalances the group.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "template": {"metadata": {"labels": plan.labels(COMPONENT)}, "spec": spec},
        },
    }


def service(plan: Plan) -> dict[str, Any]:
    """Headless: nothing calls the consumer; the ServiceMonitor finds its pods through it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(plan, name(plan), COMPONENT),
        "spec": {
            "clusterIP": "None",
            "selector": plan.selector(COMPONENT),
            "ports": [
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics",
                 "protocol": "TCP"}
            ],
        },
    }  # fmt: skip


def lag_selector(plan: Plan) -> dict[str, str]:
    """The labels that pick this consumer's group out of every group's lag in the namespace."""
    return {"group": plan.stream_group or ""}


def autoscaler(plan: Plan) -> dict[str, Any]:
    stream = consumer(plan)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(plan, name(plan), COMPONENT),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name(plan)},
            "minReplicas": stream.min_replicas,
            "maxReplicas": stream.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": LAG_METRIC,
                            "selector": {"matchLabels": lag_selector(plan)},
                        },
                        "target": {
                            "type": "AverageValue",
                            "averageValue": quantity(stream.target_lag),
                        },
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": SCALE_DOWN_WINDOW,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }
            },
        },
    }


def disruption_budget(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(plan, name(plan), COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": plan.selector(COMPONENT)}},
    }


def network_policy(plan: Plan) -> dict[str, Any]:
    """Prometheus reaches the metrics port; the consumer reaches DNS, its brokers (the URLs'
    ports), PostgreSQL (the registry), HTTPS (the artifact store) and OTLP."""
    egress_ports = sorted({5432, 443, 4318, *consumer(plan).broker_ports()})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(plan, name(plan), COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": plan.selector(COMPONENT)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": "metrics", "protocol": "TCP"}]}],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"ports": [{"port": port, "protocol": "TCP"} for port in egress_ports]},
            ],
        },
    }


def service_monitor(plan: Plan) -> dict[str, Any]:
    from berth.deploy.monitoring import API_VERSION, SCRAPE_INTERVAL

    return {
        "apiVersion": API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": metadata(plan, name(plan), COMPONENT),
        "spec": {
            "selector": {"matchLabels": plan.selector(COMPONENT)},
            "endpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "scheme": "http",
                    "interval": SCRAPE_INTERVAL,
                    "scrapeTimeout": "10s",
                }
            ],
        },
    }


ADAPTER_QUERY = "max by (namespace, group) (<<.Series>>{<<.LabelMatchers>>})"
"""The adapter's query: the largest report per group (each consumer reports the group's lag).
The adapter puts the namespace and the autoscaler's selector into LabelMatchers."""


def prometheus_adapter_values() -> dict[str, Any]:
    """Values for the prometheus-community/prometheus-adapter Helm chart (`rules.external`):
    `berth_stream_consumer_lag` through external.metrics.k8s.io, per namespace."""
    return {
        "rules": {
            "external": [
                {
                    "seriesQuery": f'{LAG_METRIC}{{namespace!="",group!=""}}',
                    "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
                    "name": {"matches": f"^{LAG_METRIC}$", "as": LAG_METRIC},
                    "metricsQuery": ADAPTER_QUERY,
                }
            ]
        }
    }
