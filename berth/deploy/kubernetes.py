"""Kubernetes objects of the server: Deployment, Service, autoscaler, disruption budget, policy.

Pods run as the image's non-root user with a read-only root filesystem, no privilege
escalation, every capability dropped and the runtime's default seccomp profile (the `restricted`
Pod Security Standard); BERTH_HOME and /tmp are emptyDirs. Settings come from a ConfigMap and
secrets from a Secret the operator creates from `secret.example.yaml` (the base never applies a
Secret, so no placeholder can reach a cluster as a real value).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from berth.deploy.plan import HOME, UID, Plan

IN_FLIGHT_METRIC = "berth_requests_in_flight"
CPU_UTILIZATION = 70
"""Average CPU use (percent of the request) the autoscaler aims at."""
DATA_VOLUME = "data"
TMP_VOLUME = "tmp"


def metadata(plan: Plan, name: str, component: str = "server") -> dict[str, Any]:
    return {"name": name, "labels": plan.labels(component)}


def config_map(plan: Plan, name: str | None = None) -> dict[str, Any]:
    """The non-secret settings; `name` gives another kustomization its own copy."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(plan, name or plan.app),
        "data": plan.settings(),
    }


def secret_template(plan: Plan, schedule_secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The Secret the pods read, with placeholders; `schedule_secrets` are variables that
    CronJobs expand into their arguments (passwords lifted out of stored schedules)."""
    values = plan.secret_placeholders()
    values.update(dict.fromkeys(schedule_secrets, "REPLACE-with-the-password-removed-here"))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(plan, plan.secret_name),
        "type": "Opaque",
        "stringData": values,
    }


def quantity(value: float) -> str:
    """A number as a Kubernetes quantity: whole numbers plainly, fractions in thousandths."""
    if float(value).is_integer():
        return str(int(value))
    return f"{max(1, round(value * 1000))}m"  # round: 2.007 * 1000 is 2007.0000000000002


def resources(plan: Plan) -> dict[str, Any]:
    options = plan.options
    return {
        "requests": {"cpu": quantity(options.cpu), "memory": options.memory},
        # Twice the CPU for bursts (model loading, warm-up); memory is a hard ceiling.
        "limits": {"cpu": quantity(2 * options.cpu), "memory": options.memory},
    }


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,  # the emptyDirs are writable by the berth user
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def env_sources(plan: Plan, config_map_name: str | None = None) -> list[dict[str, Any]]:
    return [
        {"configMapRef": {"name": config_map_name or plan.app}},
        {"secretRef": {"name": plan.secret_name}},
    ]


def volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): the writable data folder and /tmp."""
    pod = [
        {"name": DATA_VOLUME, "emptyDir": {}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts = [
        {"name": DATA_VOLUME, "mountPath": HOME},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},  # noqa: S108 - an emptyDir of the pod's own
    ]
    return pod, mounts


def pod_spec(plan: Plan, container: dict[str, Any]) -> dict[str, Any]:
    pod_volumes, mounts = volumes()
    return {
        # Berth never calls the Kubernetes API, and service links would inject variables
        # such as BERTH_PORT=tcp://... for a Service named `berth` into its settings.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "containers": [
            {
                "name": container["name"],
                "image": plan.image,
                "imagePullPolicy": "IfNotPresent",
                "envFrom": env_sources(plan),
                "securityContext": container_security(),
                "volumeMounts": mounts,
                **container,
            }
        ],
        "volumes": pod_volumes,
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _grpc_probe(port: int) -> dict[str, Any]:
    # A gRPC probe takes the port's number, not its name (Kubernetes 1.27 and later).
    return {
        "grpc": {"port": port},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }


def _named_ports(plan: Plan, key: str) -> list[dict[str, Any]]:
    """The container's (or Service's) ports by name: http, and grpc when it is on."""
    ports = [{"name": "http", key: plan.port, "protocol": "TCP"}]
    if plan.grpc_port is not None:
        ports.append({"name": "grpc", key: plan.grpc_port, "protocol": "TCP"})
    return ports


def deployment(plan: Plan) -> dict[str, Any]:
    container = {
        "name": "berth",
        "ports": _named_ports(plan, "containerPort"),
        "resources": resources(plan),
        # Loading (and, for a baked model, verifying and registering) may take minutes:
        # liveness waits until the startup probe has seen /health once.
        "startupProbe": _probe("/health", 5, 60),
        "livenessProbe": _probe("/health", 10, 3),
        # gRPC's health service is SERVING exactly when /ready is 200; asked over gRPC, the
        # probe also sees the gRPC server itself answer.
        "readinessProbe": (
            _probe("/ready", 5, 3) if plan.grpc_port is None else _grpc_probe(plan.grpc_port)
        ),
        # Endpoints drop a terminating pod a moment after SIGTERM; until then requests still
        # arrive, so the server keeps answering for 5 s before it starts to stop.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
    }
    spec = pod_spec(plan, container)
    spec["terminationGracePeriodSeconds"] = 30
    spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": plan.selector()},
        }
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(plan, plan.app),
        # No `replicas`: the HorizontalPodAutoscaler owns the count (from minReplicas), and a
        # value here would reset it on every `kubectl apply`.
        "spec": {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": plan.selector()},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {"metadata": {"labels": plan.labels()}, "spec": spec},
        },
    }


def service(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(plan, plan.app),
        "spec": {
            "type": "ClusterIP",
            "selector": plan.selector(),
            "ports": [{**port, "targetPort": port["name"]} for port in _named_ports(plan, "port")],
        },
    }


def autoscaler(plan: Plan) -> dict[str, Any]:
    """CPU, and requests in flight per pod.

    The Pods metric needs a custom-metrics adapter (e.g. prometheus-adapter) that exposes
    Berth's `berth_requests_in_flight` gauge per pod through custom.metrics.k8s.io; without one
    the autoscaler scales on CPU alone and reports the metric as unavailable.
    """
    low, high = plan.options.replica_bounds
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(plan, plan.app),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.app},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": CPU_UTILIZATION},
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": IN_FLIGHT_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": quantity(plan.options.target_in_flight),
                        },
                    },
                },
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }
            },
        },
    }


def disruption_budget(plan: Plan) -> dict[str, Any]:
    # maxUnavailable rather than minAvailable: with one replica a drain can still proceed.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(plan, plan.app),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": plan.selector()}},
    }


def network_policy(plan: Plan) -> dict[str, Any]:
    """Clients reach the HTTP (and gRPC) port only; the server reaches DNS, PostgreSQL, Redis, HTTPS
    (object stores, JWKS) and OTLP. Adjust the egress ports to where your services listen."""
    egress_ports = [5432, 6379, 443, 4318]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(plan, plan.app),
        "spec": {
            "podSelector": {"matchLabels": plan.selector()},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "ports": [
                        {"port": p["name"], "protocol": "TCP"} for p in _named_ports(plan, "port")
                    ]
                }
            ],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"ports": [{"port": port, "protocol": "TCP"} for port in egress_ports]},
            ],
        },
    }
