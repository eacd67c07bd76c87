"""What a bundle deploys and how: the resolved subject, the options, and the names derived from them.

Every generator (Dockerfile, compose, Kubernetes, KubeRay) reads one `Plan`, so the image, the
port, the resource names and the container command are decided once and agree across files.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from typing import Literal

from berth import __version__
from berth.defaults import DEFAULT_GRPC_PORT, DEFAULT_PORT
from berth.deploy.iot_edge_options import EdgeOptions
from berth.deploy.stream_options import ConsumerOptions
from berth.errors import InvalidInput
from berth.jobs.stream.options import StreamOptions
from berth.registry.versions import VersionInfo

Target = Literal["compose", "kubernetes", "kuberay", "iot-edge"]
TARGETS: tuple[Target, ...] = ("compose", "kubernetes", "kuberay", "iot-edge")
DEFAULT_TARGETS: tuple[Target, ...] = ("compose", "kubernetes")
"""Without --target; kuberay is asked for by name (it pins Ray, which `berth[ray]` installs),
and so is iot-edge (a device, not a cluster)."""
ModelSource = Literal["bake", "registry"]
SubjectKind = Literal["model", "endpoint"]

UID = 10001
"""The image's non-root user and group id (fixed, so Kubernetes can check runAsNonRoot)."""
HOME = "/var/lib/berth"
"""BERTH_HOME in the image: the only writable folder (an emptyDir or a volume)."""
BUNDLE_DIR = "/opt/berth/model"
"""Where a baked model lives in the image (read-only, owned by root)."""
BIND_ALL = "0.0.0.0"  # noqa: S104 - a server in a container listens on its own interface
RAY_VERSION = "2.60.0"

_IMAGE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?"  # registry host[:port]/
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"  # repository path
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # tag (required: a bundle pins what it runs)
)
_MEMORY = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:Ki|Mi|Gi|Ti|k|M|G|T)?")
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")
_NAME_LIMIT = 40
"""Longest resource name stem: CronJob names (stem + schedule) must stay within 52 characters."""


@dataclass(frozen=True)
class Subject:
    """What the bundle serves: one model version, or an endpoint and the versions it routes to."""

    kind: SubjectKind
    name: str
    reference: str
    """The reference as the user gave it (`churn@production`, an endpoint name)."""
    versions: tuple[VersionInfo, ...]
    served: tuple[str, ...]
    """References the server serves (`berth serve REFS`) when it reads the registry."""

    @property
    def version(self) -> VersionInfo:
        return self.versions[0]


@dataclass(frozen=True)
class BuildOptions:
    """Everything `berth build` can be told; the defaults suit a small production service."""

    targets: tuple[Target, ...] = DEFAULT_TARGETS
    model_source: ModelSource | None = None
    """bake (the model inside the image) or registry; default bake for a model, registry for
    an endpoint."""
    image: str | None = None
    """NAME:TAG of the image; default `berth-<model>:<version>`."""
    port: int = DEFAULT_PORT
    grpc_port: int | None = DEFAULT_GRPC_PORT
    """Where the server also speaks the Open Inference Protocol over gRPC; None: HTTP only."""
    replicas: int = 2
    min_replicas: int | None = None
    """Fewest replicas the autoscaler keeps; default `replicas`."""
    max_replicas: int | None = None
    """Most replicas the autoscaler starts; default twice `replicas` (at least 4)."""
    cpu: float = 0.5
    """CPU cores requested per replica; the limit is twice that."""
    memory: str = "1Gi"
    """Memory requested and limited per replica (a Kubernetes quantity)."""
    target_in_flight: float = 8.0
    """Requests in flight per replica the autoscalers aim at."""
    packages: tuple[str, ...] = ()
    """Extra installed distributions the model needs at run time (e.g. lightgbm)."""
    base_image: str | None = None
    """Python base image of the Dockerfile; default the slim image of this interpreter."""
    stream: ConsumerOptions | None = None
    """A stream consumer (`berth stream run`) to deploy beside the server, scaled on its lag."""
    edge: EdgeOptions = field(default_factory=EdgeOptions)
    """The Azure IoT Edge module (the iot-edge target): its name, restart policy, registry user."""
    force: bool = False

    def __post_init__(self) -> None:
        if not self.targets:
            raise InvalidInput(f"give at least one --target: {', '.join(TARGETS)}")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise InvalidInput(f"unknown --target {unknown}; use {', '.join(TARGETS)}")
        if not 1 <= self.port <= 65535:
            raise InvalidInput(f"--port {self.port} is not a TCP port; use 1 to 65535")
        if self.grpc_port is not None and not 1 <= self.grpc_port <= 65535:
            raise InvalidInput(f"--grpc-port {self.grpc_port} is not a TCP port; use 1 to 65535")
        if self.grpc_port == self.port:
            raise InvalidInput(f"--grpc-port and --port are both {self.port}; give them two ports")
        if self.image is not None and not _IMAGE.fullmatch(self.image):
            raise InvalidInput(
                f"--image '{self.image}' is not NAME:TAG; write e.g. "
                "registry.example.com/team/berth-churn:3 (a tag is required)"
            )
        if self.base_image is not None and not _IMAGE.fullmatch(self.base_image):
            raise InvalidInput(
                f"--base-image '{self.base_image}' is not NAME:TAG; write e.g. python:3.11.9-slim"
            )
        self._check_scale()
        if self.stream is not None and not {"kubernetes", "compose"} & set(self.targets):
            raise InvalidInput(
                "--stream-source adds a consumer to the kubernetes and compose targets; "
                "add --target kubernetes or --target compose"
            )

    def _check_scale(self) -> None:
        if not 0 < self.cpu <= 256:
            raise InvalidInput(f"--cpu {self.cpu:g} is not a number of cores; write e.g. 0.5")
        if not _MEMORY.fullmatch(self.memory):
            raise InvalidInput(f"--memory '{self.memory}' is not a quantity; write e.g. 512Mi, 2Gi")
        if self.target_in_flight <= 0:
            raise InvalidInput("--target-in-flight must be above 0")
        low, high = self.replica_bounds
        if not 1 <= low <= self.replicas <= high:
            raise InvalidInput(
                f"replicas must satisfy 1 <= --min-replicas ({low}) <= --replicas "
                f"({self.replicas}) <= --max-replicas ({high}); adjust them"
            )

    @property
    def replica_bounds(self) -> tuple[int, int]:
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        high = self.max_replicas if self.max_replicas is not None else max(4, 2 * self.replicas)
        return low, high


@dataclass(frozen=True)
class Plan:
    """A subject and options with every derived decision made."""

    subject: Subject
    options: BuildOptions
    model_source: ModelSource
    app: str
    """Name of the Kubernetes resources (`berth-churn`), a DNS label."""
    image: str
    python_image: str
    wheel: bool = False
    """Whether Berth goes into the image as a wheel built from this source tree."""
    flavors: tuple[str, ...] = field(default=())
    backup_schedules: tuple[str, ...] = ()
    """The backup schedules that become CronJobs (Kubernetes target)."""
    backup_max_age: str | None = None
    """How old the newest backup may get before BackupTooOld fires; None without backups."""
    stream_group: str | None = None
    """The stream consumer's group (`--group`), when the bundle has a consumer."""

    @property
    def port(self) -> int:
        return self.options.port

    @property
    def grpc_port(self) -> int | None:
        return self.options.grpc_port

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the server listens on: HTTP, then gRPC when it is on."""
        return (self.port,) if self.grpc_port is None else (self.port, self.grpc_port)

    @property
    def image_name(self) -> str:
        return self.image.rsplit(":", 1)[0]

    @property
    def image_tag(self) -> str:
        return self.image.rsplit(":", 1)[1]

    @property
    def ray_image(self) -> str:
        return f"{self.image_name}:{self.image_tag}-ray"

    @property
    def secret_name(self) -> str:
        return f"{self.app}-secrets"

    def command(self) -> list[str]:
        """The server's command line in the image."""
        if self.model_source == "bake":
            refs = ["--bundle", BUNDLE_DIR]
            if self.subject.version.pickle_trusted:  # trusted when registered; vouched again
                refs.append("--trust-pickle")
        else:
            refs = list(self.subject.served)
        grpc = [] if self.grpc_port is None else ["--grpc-port", str(self.grpc_port)]
        return ["berth", "serve", *refs, "--host", BIND_ALL, "--port", str(self.port), *grpc]

    def settings(self) -> dict[str, str]:
        """Non-secret `BERTH_*` settings every container gets (a ConfigMap, compose env)."""
        return {
            "BERTH_HOME": HOME,
            "BERTH_HOST": BIND_ALL,
            "BERTH_PORT": str(self.port),
            **({} if self.grpc_port is None else {"BERTH_GRPC_PORT": str(self.grpc_port)}),
            # One process per container: replicas scale out, the orchestrator restarts.
            "BERTH_WORKERS": "1",
            "BERTH_LOG_FORMAT": "json",
        }

    def secret_placeholders(self) -> dict[str, str]:
        """Secret settings, as obviously fake placeholders for a template (never real values)."""
        values = {
            "BERTH_SECRET_KEY": "REPLACE-with-output-of-openssl-rand-hex-32",
            "BERTH_DATABASE_URL": "postgresql+psycopg://berth:REPLACE-password@postgres:5432/berth",
            "BERTH_REDIS_URL": "redis://:REPLACE-password@redis:6379/0",
        }
        # Shared by every server pod, batch job and Ray replica; with a baked model the
        # servers store its artifact there too, so jobs and Ray can load it.
        values["BERTH_ARTIFACT_URL"] = "s3://REPLACE-bucket/berth/artifacts"
        return values

    def labels(self, component: str = "server") -> dict[str, str]:
        return {
            **self.selector(component),
            "app.kubernetes.io/version": dns_value(self.image_tag),
            "app.kubernetes.io/part-of": "berth",
            "app.kubernetes.io/managed-by": "berth-build",
        }

    def selector(self, component: str = "server") -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "berth",
            "app.kubernetes.io/instance": self.app,
            "app.kubernetes.io/component": component,
        }


def make_plan(
    subject: Subject, options: BuildOptions, wheel: bool, model_source: ModelSource
) -> Plan:
    stem = dns_label(f"berth-{subject.name}", _NAME_LIMIT)
    if options.image is not None:
        image = options.image
    elif subject.kind == "model":
        image = f"{stem}:{subject.version.number}"
    else:
        image = f"{stem}:{__version__}"
    flavors = tuple(sorted({v.flavor for v in subject.versions}))
    return Plan(
        subject=subject,
        options=options,
        model_source=model_source,
        app=stem,
        image=image,
        python_image=options.base_image or default_python_image(),
        wheel=wheel,
        flavors=flavors,
        stream_group=_stream_group(subject, options.stream),
    )


def _stream_group(subject: Subject, stream: ConsumerOptions | None) -> str | None:
    if stream is None:
        return None
    if subject.kind == "endpoint":
        raise InvalidInput(
            f"'{subject.name}' is an endpoint, and a stream consumer scores with one model; "
            "build the model it routes to (e.g. berth build MODEL@production --stream-source ...)"
        )
    group = StreamOptions(
        reference=subject.name, source=stream.source, sink=stream.sink, group=stream.group
    ).group_name
    if not _LABEL_VALUE.fullmatch(group):
        raise InvalidInput(
            f"--stream-group '{group}' cannot be a Kubernetes label value, which the consumer's "
            "autoscaler selects its lag by; use at most 63 letters, digits, '-', '_' and '.'"
        )
    return group


def default_python_image() -> str:
    """The official slim image of this interpreter's exact version: the pins were resolved for it."""
    major, minor, micro = sys.version_info[:3]
    return f"python:{major}.{minor}.{micro}-slim-bookworm"


def dns_label(text: str, limit: int = 63) -> str:
    """`text` as a DNS-1035 label (lowercase letters, digits, '-'), at most `limit` characters.

    A name that had to be shortened ends in a hash of the whole, so two long names stay apart.
    """
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    label = re.sub(r"-{2,}", "-", label).strip("-") or "berth"
    if not label[0].isalpha():
        label = f"b-{label}"
    if len(label) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        label = f"{label[: limit - 7].rstrip('-')}-{digest}"
    return label


def dns_value(text: str) -> str:
    """`text` as a label value: at most 63 of [A-Za-z0-9._-], starting and ending alphanumeric."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return value.strip("._-") or "unknown"
