"""The Azure IoT Edge module a bundle may describe: `berth build --target iot-edge --edge-*`.

The module's name is the key of the deployment manifest's `modules` entry, the name edgeAgent
gives its container, and the host name other modules on the device reach it by. IoT Edge takes
`[a-zA-Z0-9_-]+` there (the deployment schema's pattern) and Docker a name starting with a letter
or digit; Berth asks for a DNS label as well (letters, digits and '-', starting with a letter,
at most 63 characters), since a host name cannot hold '_'. The default, `berth-<model>`, is the
bundle's Kubernetes name, already such a label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from berth.errors import InvalidInput

RestartPolicy = Literal["always", "on-failure", "on-unhealthy", "never"]
RESTART_POLICIES: tuple[RestartPolicy, ...] = ("always", "on-failure", "on-unhealthy", "never")
"""edgeAgent's restart policies; on-unhealthy acts on the image's HEALTHCHECK (/health)."""
SYSTEM_MODULES = ("edgeagent", "edgehub")
"""The runtime's own modules (compared case-insensitively): no custom module may take them."""

_MODULE = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_USER = re.compile(r"[^\s\"']{1,256}")


@dataclass(frozen=True)
class EdgeOptions:
    """What `berth build --edge-*` was told about the IoT Edge module."""

    module: str | None = None
    """Module name; default the bundle's name (`berth-<model>`)."""
    restart_policy: RestartPolicy = "always"
    """When edgeAgent restarts the module: always, on-failure, on-unhealthy or never."""
    registry_user: str | None = None
    """User edgeAgent pulls the image with, from the registry host named in --image. Without
    it the manifest has no registryCredentials and the device pulls anonymously."""

    def __post_init__(self) -> None:
        if self.module is not None:
            check_module_name(self.module)
        if self.restart_policy not in RESTART_POLICIES:
            raise InvalidInput(
                f"--edge-restart-policy '{self.restart_policy}' is not one of "
                f"{', '.join(RESTART_POLICIES)}"
            )
        if self.registry_user is not None and not _USER.fullmatch(self.registry_user):
            raise InvalidInput(
                "--edge-registry-user must be a user name of 1 to 256 characters without "
                "spaces or quotes, e.g. the registry's name for Azure Container Registry"
            )


def check_module_name(name: str) -> str:
    """`name` if IoT Edge, Docker and a DNS resolver all accept it as the module's name."""
    if not _MODULE.fullmatch(name):
        raise InvalidInput(
            f"--edge-module '{name}' cannot name an IoT Edge module here: use 1 to 63 letters, "
            "digits and '-', starting with a letter and ending with a letter or digit (other "
            "modules reach it by this name as a host name), e.g. berth-churn"
        )
    if name.lower() in SYSTEM_MODULES:
        raise InvalidInput(
            f"--edge-module '{name}' is a module of the IoT Edge runtime; choose another name"
        )
    return name


def registry_host(image: str) -> str | None:
    """The registry host an image reference names (`myacr.azurecr.io`), or None.

    As Docker reads a reference: the first path component is a host when it has a '.' or a
    ':' or is `localhost`; otherwise the image is on Docker Hub without saying so.
    """
    first, slash, _rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None
