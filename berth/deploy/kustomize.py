"""The kustomize layout of the Kubernetes target, and an offline renderer for it.

    kubernetes/base/                 one file per resource + kustomization.yaml
    kubernetes/overlays/staging/     namespace, smaller scale, image tag
    kubernetes/overlays/production/  namespace, the scale given to `berth build`, image tag

Overlays use only `resources`, `namespace`, `images` and JSON 6902 `patches`, whose meaning is
fixed and small. `render(folder)` applies exactly those, as `kubectl kustomize` does, so the
rendered objects can be checked (and applied) where kustomize is not installed; anything else
in a kustomization makes it refuse rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from berth.deploy.kubernetes import quantity
from berth.deploy.plan import Plan
from berth.errors import InvalidInput

KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
KUSTOMIZATION = "kustomization.yaml"
_SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
_CONTAINER_PATHS = (
    ("spec", "containers"),
    ("spec", "initContainers"),
    ("spec", "template", "spec", "containers"),
    ("spec", "template", "spec", "initContainers"),
    ("spec", "jobTemplate", "spec", "template", "spec", "containers"),
    ("spec", "jobTemplate", "spec", "template", "spec", "initContainers"),
)


@dataclass(frozen=True)
class Overlay:
    name: str
    namespace: str
    min_replicas: int
    max_replicas: int
    cpu: float
    memory: str
    stream_min_replicas: int = 1
    stream_max_replicas: int = 1


def overlays(plan: Plan) -> tuple[Overlay, ...]:
    options = plan.options
    low, high = options.replica_bounds
    stream = options.stream
    stream_low, stream_high = (stream.min_replicas, stream.max_replicas) if stream else (1, 1)
    return (
        Overlay("staging", "berth-staging", 1, 2, options.cpu, options.memory,
                1, min(2, stream_high)),
        Overlay("production", "berth-production", low, high, options.cpu, options.memory,
                stream_low, stream_high),
    )  # fmt: skip


def base_kustomization(resources: list[str]) -> dict[str, Any]:
    return {"apiVersion": KUSTOMIZE_API, "kind": "Kustomization", "resources": resources}


def namespace(overlay: Overlay) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": overlay.namespace,
            # Admission refuses pods that break the restricted Pod Security Standard.
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def overlay_kustomization(plan: Plan, overlay: Overlay) -> dict[str, Any]:
    resources = {
        "requests": {"cpu": quantity(overlay.cpu), "memory": overlay.memory},
        "limits": {"cpu": quantity(2 * overlay.cpu), "memory": overlay.memory},
    }
    deployment_ops = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources", "value": resources},
    ]
    autoscaler_ops = [
        {"op": "replace", "path": "/spec/minReplicas", "value": overlay.min_replicas},
        {"op": "replace", "path": "/spec/maxReplicas", "value": overlay.max_replicas},
    ]
    patches = _scale_patches(plan.app, deployment_ops, autoscaler_ops)
    if plan.options.stream is not None:  # the consumer loads the same model: same resources
        stream_ops = [
            {"op": "replace", "path": "/spec/minReplicas", "value": overlay.stream_min_replicas},
            {"op": "replace", "path": "/spec/maxReplicas", "value": overlay.stream_max_replicas},
        ]
        patches += _scale_patches(f"{plan.app}-stream", deployment_ops, stream_ops)
    return {
        "apiVersion": KUSTOMIZE_API,
        "kind": "Kustomization",
        "namespace": overlay.namespace,
        "resources": ["namespace.yaml", "../../base"],
        "images": [{"name": plan.image_name, "newTag": plan.image_tag}],
        "patches": patches,
    }


def _scale_patches(
    name: str, deployment_ops: list[dict[str, Any]], autoscaler_ops: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [
        {
            "target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": name},
            "patch": yaml.safe_dump(deployment_ops, sort_keys=False),
        },
        {
            "target": {"group": "autoscaling", "version": "v2",
                       "kind": "HorizontalPodAutoscaler", "name": name},
            "patch": yaml.safe_dump(autoscaler_ops, sort_keys=False),
        },
    ]  # fmt: skip


# rendering ---------------------------------------------------------------------------------


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` prints, for the subset of kustomize used here."""
    path = folder / KUSTOMIZATION
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput(f"{path} is not a kustomization (a YAML mapping)")
    unknown = sorted(set(document) - _SUPPORTED)
    if unknown:
        raise InvalidInput(
            f"{path} uses {unknown}, which this renderer does not apply; "
            "render it with `kubectl kustomize` instead"
        )
    objects: list[dict[str, Any]] = []
    for entry in document.get("resources", []):
        objects.extend(_load(folder / entry))
    if "namespace" in document:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = document["namespace"]
    for image in document.get("images", []):
        _set_image(objects, image)
    for patch in document.get("patches", []):
        _patch(objects, patch, path)
    return objects


def _load(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        return render(path)
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read resource {path}: {exc}") from exc


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for route in _CONTAINER_PATHS:
        node: Any = obj
        for key in route:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, list):
            found.extend(c for c in node if isinstance(c, dict))
    return found


def _set_image(objects: list[dict[str, Any]], image: dict[str, str]) -> None:
    for obj in objects:
        for container in _containers(obj):
            current = str(container.get("image", ""))
            name, _, tag = current.rpartition(":") if ":" in current else (current, "", "")
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            tag = image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"],
              "name": obj["metadata"]["name"]}  # fmt: skip
    return all(wanted.get(key) == value for key, value in target.items())


def _patch(objects: list[dict[str, Any]], patch: dict[str, Any], source: Path) -> None:
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise InvalidInput(f"{source}: only JSON 6902 patches (a list of operations) are applied")
    targets = [obj for obj in objects if _matches(obj, patch["target"])]
    if not targets:
        raise InvalidInput(f"{source}: no resource matches patch target {patch['target']}")
    for obj in targets:
        for operation in operations:
            apply_operation(obj, operation)


def apply_operation(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove) on `document`, in place."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
    if not parts:
        raise InvalidInput("a patch may not replace a whole resource")
    parent: Any = document
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last, op = parts[-1], operation["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, operation["value"])
        elif op == "replace":
            parent[index] = operation["value"]
        elif op == "remove":
            del parent[index]
        else:
            raise InvalidInput(
                f"patch operation '{op}' is not applied here; use add/replace/remove"
            )
        return
    if op in ("replace", "remove") and last not in parent:
        raise InvalidInput(f"patch path {operation['path']} does not exist")
    if op in ("add", "replace"):
        parent[last] = operation["value"]
    elif op == "remove":
        del parent[last]
    else:
        raise InvalidInput(f"patch operation '{op}' is not applied here; use add/replace/remove")
