"""A KubeRay RayService running Berth on Ray Serve (berth.deploy.ray_serve).

The Serve application is `berth.deploy.ray_serve:build_app` with the served references and the
replica options as `args`; the deployment section repeats them in Ray 2.60's names (the same
`ReplicaOptions` the engine deploys with) so that `serve status` and the KubeRay dashboard show
what the builder set. Every Ray pod reads the
`BERTH_*` settings from the ConfigMap and Secret the Kubernetes target uses (by name), so the
replicas share the registry: the Ray target always serves the references from the registry,
even when the server image bakes a model in.
"""

from __future__ import annotations

from typing import Any

from berth.config import Settings
from berth.deploy.documents import dump
from berth.deploy.kubernetes import env_sources, metadata, quantity
from berth.deploy.plan import RAY_VERSION, Plan
from berth.deploy.ray_options import APPLICATION_NAME, IMPORT_PATH, ReplicaOptions

WORKER_GROUP = "berth"
HEAD_CPU = 1
HEAD_MEMORY = "2Gi"
_SHED_AT: int = Settings.model_fields["max_concurrent_requests"].default


def serve_config(plan: Plan) -> dict[str, Any]:
    """The Ray Serve config (what `serve deploy` takes) of Berth's application."""
    options = plan.options
    low, high = options.replica_bounds
    replicas = ReplicaOptions(
        min_replicas=low,
        max_replicas=high,
        target_ongoing_requests=options.target_in_flight,
        # A replica sheds load beyond BERTH_MAX_CONCURRENT_REQUESTS itself (503).
        max_ongoing_requests=_SHED_AT,
        replica_cpus=options.cpu,
    )
    deployment = replicas.deployment_options()  # what `berth serve --engine ray` deploys
    return {
        "http_options": {"host": "0.0.0.0", "port": plan.port},  # noqa: S104 - in the pod
        "applications": [
            {
                "name": APPLICATION_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": {"served": list(plan.subject.served), **replicas.to_args()},
                "deployments": [deployment],
            }
        ],
    }


def _security() -> dict[str, Any]:
    # Ray writes under /tmp/ray and the ray user's home, so the root filesystem stays writable.
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def ray_config_map_name(plan: Plan) -> str:
    """The Ray pods' own ConfigMap: deleting the kuberay kustomization leaves the server's."""
    return f"{plan.app}-ray"


def _template(
    plan: Plan,
    name: str,
    cpu: str,
    memory: str,
    ports: list[dict[str, Any]],
    *,
    api_access: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": plan.ray_image,
        "imagePullPolicy": "IfNotPresent",
        "envFrom": env_sources(plan, ray_config_map_name(plan)),
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory},
        },
        "securityContext": _security(),
        "volumeMounts": [{"name": "ray-tmp", "mountPath": "/tmp"}],  # noqa: S108 - emptyDir
    }
    if ports:
        container["ports"] = ports
    return {
        "metadata": {"labels": plan.labels("ray")},
        "spec": {
            # The head runs KubeRay's in-tree autoscaler, which patches the RayCluster with the
            # pod's service-account token; workers need no API access.
            "automountServiceAccountToken": api_access,
            "enableServiceLinks": False,
            "containers": [container],
            "volumes": [{"name": "ray-tmp", "emptyDir": {}}],
        },
    }


def ray_service(plan: Plan) -> dict[str, Any]:
    options = plan.options
    low, high = options.replica_bounds
    head_ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": plan.port},
    ]
    worker_cpu = quantity(max(1.0, options.cpu))
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata(plan, plan.app, "ray"),
        "spec": {
            "serveConfigV2": dump(serve_config(plan)),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # No Serve replicas on the head: it runs the GCS, the dashboard and proxies.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},  # noqa: S104
                    "template": _template(
                        plan,
                        "ray-head",
                        quantity(HEAD_CPU),
                        HEAD_MEMORY,
                        head_ports,
                        api_access=True,
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": WORKER_GROUP,
                        "replicas": low,
                        "minReplicas": low,
                        "maxReplicas": high,
                        "rayStartParams": {},
                        "template": _template(
                            plan,
                            "ray-worker",
                            worker_cpu,
                            options.memory,
                            [{"name": "serve", "containerPort": plan.port}],
                        ),
                    }
                ],
            },
        },
    }
