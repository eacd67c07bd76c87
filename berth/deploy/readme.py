"""README.md of a bundle: what is in it and the commands that deploy it."""

from __future__ import annotations

from berth import __version__
from berth.deploy.plan import Plan


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
            f"Berth listens on 127.0.0.1:{plan.port}, Prometheus on 127.0.0.1:9090 with "
            "Berth's alert rules (`prometheus/`).\n",
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
    if "kuberay" in targets:
        sections += [
            "## KubeRay\n",
            f"    docker build -f Dockerfile.ray -t {plan.ray_image} .\n"
            "    kubectl apply -k kuberay\n",
        ]
    return "\n".join(sections)
