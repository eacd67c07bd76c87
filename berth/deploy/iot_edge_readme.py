"""The bundle README's Azure IoT Edge sections: deploying the manifest, and building for ARM64."""

from __future__ import annotations

import re

from berth.deploy.iot_edge import (
    MANIFEST,
    PASSWORD_PLACEHOLDER,
    RUNTIME_VERSION,
    STORE_AND_FORWARD_SECONDS,
    module_name,
    nano_cpus,
)
from berth.deploy.iot_edge_options import registry_host
from berth.deploy.plan import HOME, Plan


def iot_edge_sections(plan: Plan) -> list[str]:
    name = module_name(plan)
    edge = plan.options.edge
    cpus = f"{nano_cpus(plan) / 10**9:g}"
    sections = [
        "## Azure IoT Edge\n",
        f"`{MANIFEST}` is a deployment manifest for one IoT Edge {RUNTIME_VERSION} device: the "
        f"runtime's edgeAgent and edgeHub, and the module `{name}` running `{plan.image}` "
        f"(restart policy `{edge.restart_policy}`). Berth runs on the device by itself: the "
        f"registry (SQLite), the server secret and the model's stored artifact live in the "
        f"Docker volume `{name}-data` at `{HOME}`, kept across restarts and redeployments; no "
        "PostgreSQL, Redis or shared store is needed.\n",
        *_deploy(plan),
        f"On the device, `sudo iotedge list` shows the module and `sudo iotedge logs {name}` its "
        "log. Create an API key in it with "
        f"`sudo docker exec {name} berth keys create edge-client --scope predict`. The port "
        f"{plan.port} is published on every interface of the device, so clients on its network "
        f"call `http://DEVICE:{plan.port}`; other modules call `http://{name}:{plan.port}`"
        + (
            f" (gRPC clients `DEVICE:{plan.grpc_port}`, published the same way)"
            if plan.grpc_port is not None
            else ""
        )
        + '. To publish it to the device only, add `"HostIp": "127.0.0.1"` to the port binding '
        "in `createOptions`.\n",
        f"Limits: `NanoCpus` is {cpus} CPU(s), twice --cpu as the Kubernetes limit, and `Memory` "
        f"is {plan.options.memory} with no swap on top (`MemorySwap` equal to it); change them "
        "with `--cpu` and `--memory`. Docker refuses to create the container when `NanoCpus` "
        "is more than the device's cores, so keep --cpu at most half of them. The root "
        "filesystem is read-only, every capability is dropped, and the logs rotate at 10 MB x "
        "3. IoT Edge takes `createOptions` as a string holding JSON; longer than 512 characters "
        "it is split into `createOptions01`, ... which edgeAgent joins back. The build checked "
        "the manifest against the IoT Edge deployment schemas before writing it.\n",
        f"`$edgeHub` routes the module's outputs to IoT Hub (`$upstream`), kept for up to "
        f"{STORE_AND_FORWARD_SECONDS // 3600} hours while the device is offline. Berth serves "
        "predictions over HTTP and sends no IoT Hub messages itself: the route is where messages "
        "sent as this module go.\n",
    ]
    if plan.options.stream is not None:
        sections.append(
            "The stream consumer is not part of the IoT Edge manifest: the compose and "
            "kubernetes targets deploy it.\n"
        )
    return [*sections, *_arm64(plan)]


def _deploy(plan: Plan) -> list[str]:
    push = (
        "Push the image where the device can pull it (see ARM64 below), then deploy with the "
        "Azure CLI's IoT extension (`az extension add --name azure-iot`):\n"
    )
    command = "az iot edge set-modules --device-id DEVICE --hub-name HUB --content {}\n"
    edge = plan.options.edge
    host = registry_host(plan.image)
    if edge.registry_user is None or host is None:
        return [
            push,
            f"    {command.format(MANIFEST)}",
            f"The manifest has no registry credentials: the device pulls `{plan.image}` "
            "anonymously. For a private registry, build again with `--edge-registry-user USER` "
            "and an `--image` that names the registry host.\n",
        ]
    key = re.sub(r"[^A-Za-z0-9_-]", "-", host)
    path = f'.modulesContent["$edgeAgent"]["properties.desired"].runtime.settings.registryCredentials["{key}"].password'
    copy = "deployment.with-password.json"
    return [
        f"edgeAgent logs in to `{host}` as `{edge.registry_user}`; the manifest's password is "
        f"the placeholder `{PASSWORD_PLACEHOLDER}`, so deploy a copy holding the real one, and "
        "delete the copy afterwards (never commit it).\n",
        push,
        f"    (umask 077 && jq --arg password \"$REGISTRY_PASSWORD\" '{path} = $password' \\\n"
        f"        {MANIFEST} > {copy})\n"
        f"    {command.format(copy)}"
        f"    rm {copy}\n",
    ]


def _arm64(plan: Plan) -> list[str]:
    return [
        "### ARM64 devices\n",
        "The image must be built for the device's CPU. For a 64-bit ARM device (Raspberry Pi "
        "4 or 5, Jetson, most gateways), build and push for `linux/arm64`, natively on an ARM "
        "machine or anywhere with Docker Buildx and QEMU (`--platform linux/amd64,linux/arm64` "
        "makes one tag for both):\n",
        f"    docker buildx build --platform linux/arm64 -t {plan.image} --push .\n",
        f"The tag in the manifest, `{plan.image}`, must be one the device can pull: pushed to a "
        "registry it reaches, for its architecture. A tag built on an x86-64 machine without "
        "`--platform` holds only amd64 and fails on the device with `exec format error`.\n",
        "`requirements.txt` pins versions, not files, so pip installs the aarch64 wheel of each "
        "pinned version: numpy, pandas, scipy, scikit-learn, pyarrow, onnxruntime and PyTorch's "
        "CPU build all publish manylinux aarch64 wheels (PyTorch on PyPI without `+cpu`; if a "
        "`+cpu` pin has no aarch64 wheel, pin the same version without it). A pin without "
        "one is built from source, and one with C code then fails for want of a compiler in "
        "the slim image. Check every pin first, in the base image on arm64:\n",
        f'    docker run --rm --platform linux/arm64 -v "$PWD/requirements.txt:/r.txt:ro" '
        f"{plan.python_image} \\\n"
        "        pip download --quiet --only-binary=:all: --no-deps -r /r.txt -d /tmp/wheels\n",
        "The pins were resolved with Linux x86-64 environment markers; a dependency only some "
        "platforms need would be missing or extra, and the image build's `pip check` says so.\n",
    ]
