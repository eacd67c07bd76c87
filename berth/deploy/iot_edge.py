"""iot-edge/deployment.json: an Azure IoT Edge deployment manifest running the bundle's image.

`az iot edge set-modules --content iot-edge/deployment.json` gives a device three modules: the
runtime's edgeAgent and edgeHub (IoT Edge 1.5 images), and Berth serving the baked model. The
device runs Berth on its own: no PostgreSQL, Redis or shared artifact store, so the model is
always baked in (an endpoint, whose routes live in a shared registry, cannot be deployed here).
The registry database, the server secret and the stored artifact live in a named Docker volume
at BERTH_HOME, kept across restarts and redeployments.

The module's container is limited as the Kubernetes target limits a pod: `NanoCpus` is twice
--cpu (the Kubernetes CPU limit), `Memory` is --memory with no swap on top. It runs with a
read-only root filesystem, every capability dropped and no new privileges, as compose runs it,
and its logs rotate (10 MB x 3) so they cannot fill the device's disk. The serving port is
published on the device; other modules reach the server as http://MODULE:PORT.

`createOptions` is a string holding JSON, as IoT Edge requires, split into 512-character chunks
(`createOptions01`, ...) when longer, as edgeAgent reads them. The manifest is checked against
the IoT Edge schemas (`iot_edge_schema`) before it is returned.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from berth.deploy.iot_edge_options import check_module_name, registry_host
from berth.deploy.iot_edge_schema import CHUNK_SIZE, MAX_CHUNKS, check, require_validator
from berth.deploy.plan import HOME, Plan
from berth.errors import InvalidInput

MANIFEST = "iot-edge/deployment.json"
RUNTIME_VERSION = "1.5"
"""IoT Edge 1.5 LTS: the tag of the edgeAgent and edgeHub images."""
AGENT_IMAGE = f"mcr.microsoft.com/azureiotedge-agent:{RUNTIME_VERSION}"
HUB_IMAGE = f"mcr.microsoft.com/azureiotedge-hub:{RUNTIME_VERSION}"
SCHEMA_VERSION = "1.1"
"""Of both runtime twins: the version IoT Edge recommends since 1.0.10 (adds startupOrder)."""
MIN_DOCKER_VERSION = "v1.25"
"""Docker API 1.25 introduced NanoCpus, which the module's limits use."""
HUB_PORTS = (5671, 8883, 443)
"""AMQP, MQTT and HTTPS/WebSockets: where downstream devices reach edgeHub."""
STORE_AND_FORWARD_SECONDS = 7200
"""How long edgeHub keeps messages while IoT Hub is unreachable."""
LOG_ROTATION = {"max-size": "10m", "max-file": "3"}
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""Docker refuses a container memory limit below 6 MB."""
PASSWORD_PLACEHOLDER = "REPLACE-with-the-registry-password"  # noqa: S105 - a placeholder

_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|k|M|G|T)?")


def module_name(plan: Plan) -> str:
    """The Berth module's name: --edge-module, or the bundle's name (`berth-churn`)."""
    return check_module_name(plan.options.edge.module or plan.app)


def preflight(plan: Plan) -> None:
    """Refuse what cannot run on a device before any file of the bundle is made."""
    require_validator()
    if plan.subject.kind == "endpoint":
        raise InvalidInput(
            f"--target iot-edge bakes a model version into the image (the device has no shared "
            f"registry), and '{plan.subject.name}' is an endpoint; build the version it serves, "
            f"e.g. berth build {plan.subject.served[0]} --target iot-edge"
        )
    if plan.model_source != "bake":
        raise InvalidInput(
            "--target iot-edge bakes the model into the image (the device has no shared "
            "registry); drop --model-source registry"
        )
    module_name(plan)
    edge = plan.options.edge
    if edge.registry_user is not None and registry_host(plan.image) is None:
        raise InvalidInput(
            f"--edge-registry-user logs the device in to the registry of --image, but "
            f"'{plan.image}' names no registry host; give --image with one, e.g. "
            "myacr.azurecr.io/churn:3 or docker.io/team/churn:3"
        )
    memory_bytes(plan.options.memory)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (768Mi, 1.5Gi, 512M) in bytes, as Docker's Memory wants it."""
    found = _QUANTITY.fullmatch(quantity)
    if found is None:
        raise InvalidInput(f"--memory '{quantity}' is not a quantity; write e.g. 512Mi, 2Gi")
    value = int(Decimal(found["number"]) * _UNITS[found["unit"] or ""])
    if value < MIN_MEMORY_BYTES:
        raise InvalidInput(
            f"--memory {quantity} is below Docker's smallest container limit (6 MB); "
            "give Berth at least a few hundred MiB, e.g. 512Mi"
        )
    return value


def nano_cpus(plan: Plan) -> int:
    """The CPU limit in billionths of a CPU: twice --cpu, as the Kubernetes limit."""
    return int(Decimal(str(plan.options.cpu)) * 2 * 10**9)


def create_options(plan: Plan) -> dict[str, Any]:
    """Docker's container create options of the Berth module (before they become a string)."""
    ports = {f"{port}/tcp": str(port) for port in plan.ports}
    memory = memory_bytes(plan.options.memory)
    return {
        "ExposedPorts": {port: {} for port in ports},
        "HostConfig": {
            "PortBindings": {port: [{"HostPort": host}] for port, host in ports.items()},
            "Memory": memory,
            "MemorySwap": memory,  # equal to Memory: no swap on top, as in Kubernetes
            "NanoCpus": nano_cpus(plan),
            "Binds": [f"{module_name(plan)}-data:{HOME}"],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": ""},  # noqa: S108 - the container's own scratch space
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file", "Config": LOG_ROTATION},
        },
    }


def create_options_fields(options: dict[str, Any]) -> dict[str, str]:
    """`options` as IoT Edge wants them: a JSON string, in chunks edgeAgent joins back."""
    text = json.dumps(options, separators=(",", ":"))
    chunks = [text[i : i + CHUNK_SIZE] for i in range(0, len(text), CHUNK_SIZE)]
    if len(chunks) > MAX_CHUNKS:
        raise InvalidInput(
            f"the module's create options are {len(text):,} characters, over IoT Edge's "
            f"{MAX_CHUNKS * CHUNK_SIZE:,}; shorten --edge-module"
        )
    return {
        ("createOptions" if i == 0 else f"createOptions{i:02d}"): c for i, c in enumerate(chunks)
    }


def manifest(plan: Plan) -> dict[str, Any]:
    """The deployment manifest, checked against the IoT Edge schemas."""
    name = module_name(plan)
    edge = plan.options.edge
    settings: dict[str, Any] = {"minDockerVersion": MIN_DOCKER_VERSION}
    host = registry_host(plan.image)
    if edge.registry_user is not None and host is not None:
        # A registry id may not hold '.', '$', '#' or a space.
        settings["registryCredentials"] = {
            re.sub(r"[^A-Za-z0-9_-]", "-", host): {
                "username": edge.registry_user,
                "password": PASSWORD_PLACEHOLDER,
                "address": host,
            }
        }
    hub_ports = {f"{p}/tcp": [{"HostPort": str(p)}] for p in HUB_PORTS}
    document = {
        "modulesContent": {
            "$edgeAgent": {
                "properties.desired": {
                    "schemaVersion": SCHEMA_VERSION,
                    "runtime": {"type": "docker", "settings": settings},
                    "systemModules": {
                        "edgeAgent": {
                            "type": "docker",
                            "settings": {"image": AGENT_IMAGE, "createOptions": "{}"},
                        },
                        "edgeHub": {
                            "type": "docker",
                            "status": "running",
                            "restartPolicy": "always",
                            "startupOrder": 0,
                            "settings": {
                                "image": HUB_IMAGE,
                                **create_options_fields(
                                    {"HostConfig": {"PortBindings": hub_ports}}
                                ),
                            },
                        },
                    },
                    "modules": {
                        name: {
                            "version": plan.image_tag,
                            "type": "docker",
                            "status": "running",
                            "restartPolicy": edge.restart_policy,
                            "startupOrder": 1,
                            "settings": {
                                "image": plan.image,
                                **create_options_fields(create_options(plan)),
                            },
                            "env": {
                                key: {"value": value} for key, value in plan.settings().items()
                            },
                        }
                    },
                }
            },
            "$edgeHub": {
                "properties.desired": {
                    "schemaVersion": SCHEMA_VERSION,
                    "routes": {
                        f"{name}-to-upstream": {
                            "route": f"FROM /messages/modules/{name}/outputs/* INTO $upstream",
                            "priority": 0,
                            "timeToLiveSecs": STORE_AND_FORWARD_SECONDS,
                        }
                    },
                    "storeAndForwardConfiguration": {"timeToLiveSecs": STORE_AND_FORWARD_SECONDS},
                }
            },
        }
    }
    check(document)
    return document


def render(plan: Plan) -> str:
    return json.dumps(manifest(plan), indent=2) + "\n"
