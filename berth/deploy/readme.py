"""README.md of a bundle: what is in it and the commands that deploy it."""

from __future__ import annotations

from berth import __version__
from berth.deploy.iot_edge_readme import iot_edge_sections
from berth.deploy.plan import Plan
from berth.deploy.stream_options import METRICS_PORT


def render_readme(plan: Plan) -> str:
    subject = plan.subject
    targets = plan.options.targets
    if plan.model_source == "bake":
        serving = (
            f"The image bakes in {subject.version.ref} ({subject.version.flavor}, sha256 "
            f"`{subject.version.artifact.sha256[:12]}…`). At start, `berth serve --bundle` checks "
            "the files against `model/berth-bundle.json`, refuses to start if they differ, and "
            "registers the version in the registry of `BERTH_DATABASE_URL` unless it is already "
            "there (so replicas register it once)."
        )
    else:
        serving = (
            f"The server serves {', '.join(subject.served)} from the registry: set "
            "`BERTH_DATABASE_URL` and `BERTH_ARTIFACT_URL` to the shared registry and store."
        )
    sections = [
        f"# Berth bundle: {subject.reference}\n",
        f"Written by `berth build` (berth {__version__}). {serving}\n",
        "## Image\n",
        f"    docker build -t {plan.image} .\n",
        "Dependencies are pinned in `requirements.txt`; the server runs as uid 10001 and "
        "answers `/health` (liveness) and `/ready` (readiness). No secret is in the image.\n",
        "Every replica must share `BERTH_SECRET_KEY` and the registry database: API keys are "
        "checked against it. Create a key in a running container with "
        "`berth keys create NAME --scope predict`.\n",
    ]
    if "compose" in targets:
        sections += [
            "## Docker Compose\n",
            "    cp .env.example .env   # then replace every REPLACE value\n"
            "    docker compose up -d\n",
            f"Berth listens on 127.0.0.1:{plan.port}"
            + (f" (gRPC on 127.0.0.1:{plan.grpc_port})" if plan.grpc_port is not None else "")
            + ", Prometheus on 127.0.0.1:9090 with Berth's alert rules (`prometheus/`).\n",
        ]
    if "kubernetes" in targets:
        sections += [
            "## Kubernetes\n",
            f"Create the Secret `{plan.secret_name}` in the namespace (see "
            "`kubernetes/base/secret.example.yaml`), push the image, then:\n",
            "    kubectl apply -k kubernetes/overlays/staging\n"
            "    kubectl apply -k kubernetes/overlays/production\n",
            "The ServiceMonitor and PrometheusRule need the Prometheus Operator; the autoscaler's "
            "in-flight metric needs a custom metrics adapter (see `kubernetes/base/hpa.yaml`).\n",
        ]
        if plan.backup_schedules:
            sections += [
                "### Backups\n",
                "The CronJobs of the registry's backup schedules ("
                + ", ".join(f"`{name}`" for name in plan.backup_schedules)
                + ") run `berth backup create --to ...` in this image, with the server's settings "
                "and Secret, never two at once (concurrencyPolicy Forbid). Each run is a job in "
                "`berth jobs list`; the server exports the time of the newest that succeeded as "
                "`berth_backup_last_success_timestamp_seconds`, and the PrometheusRule's "
                f"`BackupTooOld` fires when it is older than {plan.backup_max_age} (or when none "
                "has succeeded that long after Berth came up). Back up to object-store URLs: a "
                "folder inside a pod is gone when the pod ends. If several bundles share this "
                "registry, keep the backup CronJobs in one of them.\n",
            ]
    if plan.options.stream is not None:
        sections += _stream_sections(plan)
    if "kuberay" in targets:
        sections += [
            "## KubeRay\n",
            f"    docker build -f Dockerfile.ray -t {plan.ray_image} .\n"
            "    kubectl apply -k kuberay\n",
        ]
    if "iot-edge" in targets:
        sections += iot_edge_sections(plan)
    return "\n".join(sections)


def _stream_sections(plan: Plan) -> list[str]:
    stream = plan.options.stream
    assert stream is not None
    model = (
        "`--bundle` on the baked model, so it scores with the version the servers serve "
        "(whichever pod starts first registers it; the others find it)"
        if plan.model_source == "bake"
        else f"`{plan.subject.served[0]}` from the registry, following the reference as the "
        "servers do"
    )
    sections = [
        "## Stream consumer\n",
        f"`berth stream run` scores {stream.shown()} as consumer group `{plan.stream_group}`, "
        f"apart from the server but from its image and settings. It loads {model}. "
        "Events are acknowledged only after their outputs are written; failures go to the "
        "dead-letter stream with the reason. A password in a broker URL is not in any "
        "manifest: it is read from the Secret (the `BERTH_STREAM_SECRET_n` keys of "
        "`secret.example.yaml`; `.env` for compose).\n",
        f"The consumer serves Prometheus metrics on port {METRICS_PORT} (`/metrics`: lag, "
        "throughput, outcomes), which its probes also read: the port opens once the brokers "
        "are joined and the model is loaded. On SIGTERM it finishes and acknowledges the batch "
        "in flight before exiting; events of a pod killed mid-batch are delivered again.\n",
    ]
    if "kubernetes" in plan.options.targets:
        sections += [
            "### Scaling on lag\n",
            "`kubernetes/base/stream-hpa.yaml` scales the consumer on its group's lag, as "
            "Kubernetes' queue-length example does: an External metric, "
            f'`berth_stream_consumer_lag{{group="{plan.stream_group}"}}`, with a target of '
            f"{stream.target_lag} waiting events per replica, so it runs ceil(lag / "
            f"{stream.target_lag}) replicas between {stream.min_replicas} and "
            f"{stream.max_replicas}. Every consumer reports the whole group's lag, so the "
            "adapter takes the largest report, never the sum. The external metrics API needs "
            "prometheus-adapter with the rule in `kubernetes/prometheus-adapter-values.yaml` "
            "(its header has the `helm` command); without it the consumer stays at "
            f"{stream.min_replicas} replica(s).\n",
            f"The PrometheusRule's `StreamConsumerLagHigh` fires when the lag stays over "
            f"{stream.lag_alert_threshold} events (what {stream.max_replicas} replicas at the "
            "target cannot shed) for 10 minutes; `StreamConsumerStalled` when events wait and "
            "none is finished, or when every consumer is gone with events left waiting.\n",
        ]
        if stream.partitioned:
            sections.append(
                "Kafka gives each partition of the topic to one consumer of the group: replicas "
                "beyond the partition count stay idle, so keep `--stream-max-replicas` at or "
                "below it. Each scaling step rebalances the group (a short pause), which is why "
                "the autoscaler removes at most one replica a minute after 5 minutes of lower "
                "lag.\n"
            )
    if "compose" in plan.options.targets:
        sections += [
            "### Docker Compose\n",
            "The `berth-stream` service runs the consumer after the server is healthy, and "
            "Prometheus scrapes it. Run more consumers with "
            "`docker compose up -d --scale berth-stream=3`.\n",
        ]
    return sections
