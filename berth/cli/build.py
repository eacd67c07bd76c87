"""`berth build`: write a deployable bundle (image, compose, Kubernetes, KubeRay, IoT Edge)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from berth.cli.context import console, registry, remote
from berth.defaults import DEFAULT_GRPC_PORT, DEFAULT_PORT

if TYPE_CHECKING:  # the bundle writer reads the registry: imported when `berth build` runs
    from berth.deploy.build import BuildResult
    from berth.deploy.iot_edge_options import EdgeOptions
    from berth.deploy.source import BuildSource
    from berth.deploy.stream_options import ConsumerOptions


class Target(enum.StrEnum):
    compose = "compose"
    kubernetes = "kubernetes"
    kuberay = "kuberay"
    iot_edge = "iot-edge"


class RestartPolicy(enum.StrEnum):
    always = "always"
    on_failure = "on-failure"
    on_unhealthy = "on-unhealthy"
    never = "never"


class Source(enum.StrEnum):
    bake = "bake"
    registry = "registry"


def build(
    reference: str = typer.Argument(
        ..., help="A model (NAME, NAME:VERSION, NAME@ALIAS) or an endpoint name."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write the bundle into (new or empty)."),
    target: list[Target] = typer.Option(
        [],
        "--target",
        help="compose, kubernetes, kuberay or iot-edge (an Azure IoT Edge deployment manifest; "
        "repeatable; default compose and kubernetes). The Dockerfile is always written.",
    ),
    model_source: Source | None = typer.Option(
        None,
        "--model-source",
        help="bake: the model goes into the image (default for a model); registry: the server "
        "reads it from BERTH_DATABASE_URL/BERTH_ARTIFACT_URL (default for an endpoint).",
    ),
    image: str | None = typer.Option(
        None, "--image", help="Image NAME:TAG (default berth-<model>:<version>)."
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port the server listens on."),
    grpc_port: int = typer.Option(
        DEFAULT_GRPC_PORT,
        "--grpc-port",
        help="Port of the Open Inference Protocol over gRPC (its own container port and "
        "health probe); 0 leaves gRPC out.",
    ),
    replicas: int = typer.Option(2, "--replicas", min=1, help="Replicas in production."),
    min_replicas: int | None = typer.Option(
        None,
        "--min-replicas",
        min=1,
        help="Fewest replicas the autoscaler keeps (default --replicas).",
    ),
    max_replicas: int | None = typer.Option(
        None,
        "--max-replicas",
        min=1,
        help="Most replicas the autoscaler starts (default 2x, at least 4).",
    ),
    cpu: float = typer.Option(
        0.5, "--cpu", help="CPU cores requested per replica (the limit is twice that)."
    ),
    memory: str = typer.Option("1Gi", "--memory", help="Memory per replica, e.g. 512Mi or 2Gi."),
    target_in_flight: float = typer.Option(
        8.0, "--target-in-flight", help="Requests in flight per replica the autoscalers aim at."
    ),
    package: list[str] = typer.Option(
        [],
        "--with",
        help="An installed distribution the model needs at run time, pinned into the image "
        "with its dependencies (repeatable), e.g. --with lightgbm.",
    ),
    base_image: str | None = typer.Option(
        None, "--base-image", help="Python base image (default: this interpreter's slim image)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace what a previous build wrote into a non-empty --out."
    ),
    stream_source: str | None = typer.Option(
        None,
        "--stream-source",
        help="Add a stream consumer (berth stream run) beside the server, reading this URL "
        "(redis://, nats://, as `berth stream run --source`), scaled on its lag.",
    ),
    stream_sink: str | None = typer.Option(
        None, "--stream-sink", help="Where the consumer writes outputs."
    ),
    stream_dead_letter: str | None = typer.Option(
        None,
        "--stream-dead-letter",
        help="Where events that cannot be scored go (default: the source + '.dead').",
    ),
    stream_group: str | None = typer.Option(
        None,
        "--stream-group",
        help="Consumer group (default berth-MODEL).",
    ),
    stream_batch_size: int = typer.Option(
        100, "--stream-batch-size", help="Most events per prediction call."
    ),
    stream_min_replicas: int = typer.Option(
        1, "--stream-min-replicas", help="Fewest consumer replicas."
    ),
    stream_max_replicas: int = typer.Option(
        4,
        "--stream-max-replicas",
        help="Most consumer replicas (Kafka: at most the topic's partitions).",
    ),
    stream_target_lag: int = typer.Option(
        1000,
        "--stream-target-lag",
        help="Events waiting per consumer replica the autoscaler aims at.",
    ),
    stream_alert_lag: int | None = typer.Option(
        None,
        "--stream-alert-lag",
        help="StreamConsumerLagHigh threshold (default: target lag x max replicas).",
    ),
    edge_module: str | None = typer.Option(
        None,
        "--edge-module",
        help="iot-edge: the module's name (default berth-MODEL): letters, digits and '-'.",
    ),
    edge_restart_policy: RestartPolicy | None = typer.Option(
        None,
        "--edge-restart-policy",
        help="iot-edge: when edgeAgent restarts the module (default always).",
    ),
    edge_registry_user: str | None = typer.Option(
        None,
        "--edge-registry-user",
        help="iot-edge: user the device pulls --image with from its registry host; the manifest "
        "gets registryCredentials with a password placeholder (default: anonymous pull).",
    ),
) -> None:
    """Write a deployable bundle: Dockerfile, compose.yaml, Kubernetes, a RayService, IoT Edge.

    Dependencies are pinned to the versions installed here. Kubernetes manifests are a
    kustomize base with staging and production overlays; every batch schedule becomes a
    CronJob. Nothing secret is written: secrets are templates with placeholders. In remote mode
    (`berth login`, or BERTH_SERVER with an admin key) the model is downloaded from the server
    and checked against its sha256: the bundle is the one a local build writes.

    With --stream-source and --stream-sink, a stream consumer is deployed beside the server:
    its own Deployment from the same image, scaled on its consumer group's lag.

    --target iot-edge writes iot-edge/deployment.json for `az iot edge set-modules`: the
    model baked into the image, run on the device with the --cpu/--memory limits, checked
    against the IoT Edge deployment schemas.

    Example: berth build churn@production --out deploy/churn --target kubernetes --image registry.example.com/churn:3
    """
    from berth.deploy.build import build as build_bundle
    from berth.deploy.plan import DEFAULT_TARGETS, BuildOptions

    options = BuildOptions(
        targets=tuple(t.value for t in target) or DEFAULT_TARGETS,
        model_source=model_source.value if model_source else None,
        image=image,
        port=port,
        grpc_port=grpc_port or None,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        target_in_flight=target_in_flight,
        packages=tuple(package),
        base_image=base_image,
        stream=_consumer(
            stream_source,
            stream_sink,
            stream_dead_letter,
            stream_group,
            stream_batch_size,
            (stream_min_replicas, stream_max_replicas),
            stream_target_lag,
            stream_alert_lag,
        ),
        edge=_edge(target, edge_module, edge_restart_policy, edge_registry_user),
        force=force,
    )
    result = build_bundle(_source(), reference, out, options)
    _report(result)


def _consumer(
    source: str | None,
    sink: str | None,
    dead_letter: str | None,
    group: str | None,
    batch_size: int,
    replicas: tuple[int, int],
    target_lag: int,
    alert_lag: int | None,
) -> ConsumerOptions | None:
    from berth.deploy.stream_options import ConsumerOptions
    from berth.errors import InvalidInput

    if source is None:
        given = [flag for flag, value in (("--stream-sink", sink),
                 ("--stream-dead-letter", dead_letter), ("--stream-group", group),
                 ("--stream-alert-lag", alert_lag)) if value is not None]  # fmt: skip
        if given:
            raise InvalidInput(f"{given[0]} needs --stream-source: the URL the consumer reads")
        return None
    if sink is None:
        raise InvalidInput("--stream-source needs --stream-sink: where the consumer writes outputs")
    return ConsumerOptions(
        source=source,
        sink=sink,
        dead_letter=dead_letter,
        group=group,
        batch_size=batch_size,
        min_replicas=replicas[0],
        max_replicas=replicas[1],
        target_lag=target_lag,
        alert_lag=alert_lag,
    )


def _edge(
    targets: list[Target],
    module: str | None,
    restart_policy: RestartPolicy | None,
    registry_user: str | None,
) -> EdgeOptions:
    from berth.deploy.iot_edge_options import EdgeOptions
    from berth.errors import InvalidInput

    if Target.iot_edge not in targets:
        given = [flag for flag, value in (("--edge-module", module),
                 ("--edge-restart-policy", restart_policy),
                 ("--edge-registry-user", registry_user)) if value is not None]  # fmt: skip
        if given:
            raise InvalidInput(f"{given[0]} configures the IoT Edge module; add --target iot-edge")
    return EdgeOptions(
        module=module,
        restart_policy=restart_policy.value if restart_policy else "always",
        registry_user=registry_user,
    )


def _source() -> BuildSource:
    """The registry itself, or in remote mode the server's admin API (the same bundle)."""
    server = remote()
    if server is not None:
        from berth.cli.remote_build import RemoteSource

        return RemoteSource(server)
    from berth.deploy.source import RegistrySource

    return RegistrySource(registry())


def _report(result: BuildResult) -> None:
    plan = result.plan
    what = (
        plan.subject.version.ref if plan.model_source == "bake" else ", ".join(plan.subject.served)
    )
    console.print(
        f"Wrote the bundle for {escape(plan.subject.reference)} ({plan.model_source}: "
        f"{escape(what)}) to {escape(str(result.out))}:",
        highlight=False,
        soft_wrap=True,
    )
    artifact = [f for f in result.files if f.startswith("model/artifact/")]
    for name in result.files:
        if name.startswith("model/artifact/"):
            continue
        console.print(f"  {escape(name)}", highlight=False, soft_wrap=True)
    if artifact:
        console.print(f"  model/artifact/ ({len(artifact)} file(s))", highlight=False)
    console.print(f"Next: docker build -t {escape(plan.image)} {escape(str(result.out))}")
