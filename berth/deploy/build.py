"""`berth build`: resolve what to deploy, then write the bundle's files for the chosen targets.

The bundle is written into a private folder beside DIR and moved into place only once every
file exists, so a failed build (a dependency that cannot be pinned, a wheel that does not build)
leaves DIR as it was. `force` replaces the entries a previous build wrote and leaves everything
else in DIR alone (your `.env`, a `.git`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from berth import __version__
from berth.deploy import compose, cronjobs, dockerfile, iot_edge, kuberay, kubernetes, monitoring
from berth.deploy import kustomize as kz
from berth.deploy import requirements as req
from berth.deploy import stream_consumer as sc
from berth.deploy.backup_alert import backup_max_age
from berth.deploy.bundle import bake
from berth.deploy.documents import dump
from berth.deploy.plan import RAY_VERSION, BuildOptions, ModelSource, Plan, Subject, make_plan
from berth.deploy.readme import render_readme
from berth.deploy.source import BatchSchedule, BuildSource, own_schedules, resolve
from berth.deploy.stream_options import METRICS_PORT
from berth.errors import Conflict, InvalidInput
from berth.observability.alerts import render_rules
from berth.observability.prometheus_config import render_config

GENERATED = (
    "Dockerfile", "Dockerfile.ray", ".dockerignore", "requirements.txt", "requirements-ray.txt",
    "wheels", "model", "compose.yaml", ".env.example", "prometheus", "kubernetes", "kuberay",
    "iot-edge", "README.md",
)  # fmt: skip
"""The top-level entries a build writes: what --force replaces."""


@dataclass(frozen=True)
class BuildResult:
    out: Path
    plan: Plan
    files: tuple[str, ...]
    """Every file written, relative to `out`, sorted."""


def choose_source(subject: Subject, asked: ModelSource | None) -> ModelSource:
    if asked is None:
        return "bake" if subject.kind == "model" else "registry"
    if asked == "bake" and subject.kind == "endpoint":
        raise InvalidInput(
            f"'{subject.name}' is an endpoint: its routes live in the shared registry and change "
            "with rollouts, so it cannot be baked into an image; use --model-source registry"
        )
    return asked


def build(source: BuildSource, reference: str, out: Path, options: BuildOptions) -> BuildResult:
    """Write the bundle for `reference` into `out`, reading the registry through `source`."""
    subject = resolve(source, reference)
    model_source = choose_source(subject, options.model_source)
    out = out.expanduser().resolve()
    _check_out(out, options.force)
    tree = req.source_tree()
    plan = make_plan(subject, options, wheel=tree is not None, model_source=model_source)
    if "iot-edge" in options.targets:
        iot_edge.preflight(plan)
    pins = _pins(plan)
    ray_pins = _ray_pins(plan) if "kuberay" in options.targets else None
    schedules = own_schedules(source.schedules(), subject)
    backups = [s for s in schedules if s.kind == "backup"]
    if backups and "kubernetes" in options.targets:
        # The CronJobs run the backups, so the rules can expect them.
        plan = replace(
            plan,
            backup_schedules=tuple(s.name for s in backups),
            backup_max_age=backup_max_age(backups),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        stage = Path(scratch)
        files = _Files(stage)
        files.text("requirements.txt", req.render(pins, _pins_header(plan)))
        if ray_pins is not None:
            files.text("requirements-ray.txt", req.render(ray_pins, _pins_header(plan)))
        if tree is not None:
            req.build_wheel(tree, stage / dockerfile.WHEELS)
        if model_source == "bake":
            bake(source, subject.version, stage / dockerfile.MODEL, reference)
        _write_image(files, plan, ray=ray_pins is not None)
        if "compose" in options.targets:
            _write_compose(files, plan)
        if "kubernetes" in options.targets:
            _write_kubernetes(files, plan, schedules)
        if "kuberay" in options.targets:
            _write_kuberay(files, plan)
        if "iot-edge" in options.targets:
            files.text(iot_edge.MANIFEST, iot_edge.render(plan))
        files.text("README.md", render_readme(plan))
        written = tuple(sorted(p.relative_to(stage).as_posix() for p in _walk(stage)))
        _move_into(stage, out, options.force)
    return BuildResult(out=out, plan=plan, files=written)


# checks and pins ---------------------------------------------------------------------------


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise Conflict(
            f"--out {out} is not empty; give an empty or new folder, or pass --force to "
            "replace the files a previous `berth build` wrote there"
        )


def _pins(plan: Plan) -> dict[str, str]:
    pins = req.closure(req.berth_roots(plan.flavors, plan.options.packages))
    pins.pop(req.PROJECT, None)
    if not plan.wheel:
        pins[req.PROJECT] = __version__  # from the package index, like its dependencies
    return pins


def _ray_pins(plan: Plan) -> dict[str, str]:
    pins = _pins(plan)
    try:
        ray = req.closure(["ray[serve]"])
    except InvalidInput as exc:
        raise InvalidInput(
            f"the kuberay target needs Ray Serve here to pin its version: {exc.message}"
        ) from exc
    if ray["ray"] != RAY_VERSION:
        raise InvalidInput(
            f"the kuberay target is made for Ray {RAY_VERSION}, but Ray {ray['ray']} is "
            f"installed here; install ray[serve]=={RAY_VERSION} or drop --target kuberay"
        )
    conflicts = sorted(n for n in set(pins) & set(ray) if pins[n] != ray[n])
    if conflicts:  # one environment has one version of each; this cannot happen
        raise AssertionError(f"conflicting pins: {conflicts}")
    return {**pins, **ray}


def _pins_header(plan: Plan) -> str:
    return (
        f"# Pinned by `berth build` (berth {__version__}) from the environment it ran in: the\n"
        f"# runtime dependencies of Berth for {', '.join(plan.flavors) or 'its'} models.\n"
        + req.machine_note()
    )


# writers -----------------------------------------------------------------------------------


class _Files:
    """Writes the bundle's files under one root, with a header comment on generated YAML."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def text(self, relative: str, content: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")

    def yaml(self, relative: str, document: Any, header: str) -> None:
        comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
        self.text(relative, comment + dump(document))


def _write_image(files: _Files, plan: Plan, ray: bool) -> None:
    files.text("Dockerfile", dockerfile.render_dockerfile(plan))
    files.text(".dockerignore", dockerfile.render_dockerignore())
    if ray:
        files.text("Dockerfile.ray", dockerfile.render_ray_dockerfile(plan, req.python_tag()))


def _write_compose(files: _Files, plan: Plan) -> None:
    secrets = cronjobs.ScheduleSecrets()
    consumer = " and a stream consumer" if plan.options.stream is not None else ""
    files.yaml(
        "compose.yaml",
        compose.build_compose(plan, secrets),
        f"Berth ({plan.subject.reference}){consumer} with PostgreSQL, Redis and Prometheus.\n"
        "Copy .env.example to .env, replace its REPLACE values, then: docker compose up -d",
    )
    files.text(".env.example", compose.render_env_example(list(secrets.values)))
    files.text(f"prometheus/{compose.CONFIG_FILE}", render_config(compose.prometheus_config(plan)))
    files.text(f"prometheus/{compose.RULES_FILE}", render_rules(compose.alert_rules(plan)))


_Maker = Callable[[Plan], dict[str, Any]]
_BASE: tuple[tuple[str, _Maker, str], ...] = (
    ("configmap.yaml", kubernetes.config_map, "Non-secret BERTH_* settings of every pod."),
    ("deployment.yaml", kubernetes.deployment,
     "The server: restricted security context, probes on /health (liveness, startup) and\n"
     "/ready (readiness). Secrets come from the Secret in secret.example.yaml."),
    ("service.yaml", kubernetes.service, "The server's ClusterIP Service (port name: http)."),
    ("hpa.yaml", kubernetes.autoscaler,
     "Scales on CPU and on berth_requests_in_flight per pod. The Pods metric needs a custom\n"
     "metrics adapter (e.g. prometheus-adapter) exposing that gauge per pod through\n"
     "custom.metrics.k8s.io; without one the autoscaler uses CPU alone."),
    ("pdb.yaml", kubernetes.disruption_budget, "At most one server pod down for voluntary disruptions."),
    ("networkpolicy.yaml", kubernetes.network_policy,
     "Ingress to the HTTP port only; egress to DNS, PostgreSQL, Redis, HTTPS and OTLP.\n"
     "Adjust the egress ports to where your services listen."),
    ("servicemonitor.yaml", monitoring.service_monitor,
     "Prometheus Operator: scrape /metrics of every server pod. Needs the operator's CRDs;\n"
     "add the label your Prometheus' serviceMonitorSelector wants (e.g. release: NAME)."),
    ("prometheusrule.yaml", monitoring.prometheus_rule,
     "Prometheus Operator: Berth's alerting and recording rules (berth observability alerts),\n"
     "for the scrape job named after the Service. Add your ruleSelector's label if needed."),
)  # fmt: skip


def _write_kubernetes(files: _Files, plan: Plan, schedules: list[BatchSchedule]) -> None:
    generated = f"Generated by `berth build {plan.subject.reference}`; regenerate rather than edit."
    resources: list[str] = []
    for name, make, note in _BASE:
        files.yaml(f"kubernetes/base/{name}", make(plan), f"{note}\n{generated}")
        resources.append(name)
    secrets = cronjobs.ScheduleSecrets()
    if plan.options.stream is not None:
        resources += _write_consumer(files, plan, secrets, generated)
    for info in schedules:
        name = f"cronjob-{cronjobs.cronjob_name(plan, info.name)}.yaml"
        if info.kind == "backup":
            note = (
                f"Backup schedule '{info.name}' ({info.cron}, {info.timezone}): berth backup "
                "create.\nA local folder destination is inside the pod and lost when it ends:\n"
                "back up to s3://, gs:// or az:// URLs (or a mounted volume's path).\n"
                f"BackupTooOld (prometheusrule.yaml) fires when no backup succeeded for "
                f"{plan.backup_max_age}.\n"
            )
        else:
            note = (
                f"Batch schedule '{info.name}' ({info.cron}, {info.timezone}): berth batch run.\n"
                "A relative file path in its arguments is written inside the pod and lost when "
                "the\npod ends: give sources and sinks as database or object-store URLs.\n"
            )
        files.yaml(
            f"kubernetes/base/{name}", cronjobs.cronjob(plan, info, secrets), note + generated
        )
        resources.append(name)
    files.yaml(
        "kubernetes/base/secret.example.yaml",
        kubernetes.secret_template(plan, secrets.values),
        "TEMPLATE - not applied by kustomization.yaml, and its values are placeholders.\n"
        "Create the real Secret in each namespace before applying, e.g.:\n"
        f"  kubectl -n NAMESPACE create secret generic {plan.secret_name} \\\n"
        "    --from-literal=BERTH_SECRET_KEY=$(openssl rand -hex 32) \\\n"
        "    --from-literal=BERTH_DATABASE_URL=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB ...\n"
        "with one --from-literal per key below. Pods do not start until it exists.",
    )
    files.yaml(
        "kubernetes/base/kustomization.yaml",
        kz.base_kustomization(resources),
        f"Kustomize base. Apply an overlay: kubectl apply -k kubernetes/overlays/production\n"
        f"{generated}",
    )
    for overlay in kz.overlays(plan):
        folder = f"kubernetes/overlays/{overlay.name}"
        files.yaml(f"{folder}/namespace.yaml", kz.namespace(overlay), generated)
        files.yaml(
            f"{folder}/kustomization.yaml",
            kz.overlay_kustomization(plan, overlay),
            f"{overlay.name}: namespace {overlay.namespace}, {overlay.min_replicas}-"
            f"{overlay.max_replicas} replicas, image tag {plan.image_tag}.\n{generated}",
        )


def _write_consumer(
    files: _Files, plan: Plan, secrets: cronjobs.ScheduleSecrets, generated: str
) -> list[str]:
    """The stream consumer's objects in the base, and the adapter values beside it."""
    stream = sc.consumer(plan)
    group = plan.stream_group
    lag = f'berth_stream_consumer_lag{{group="{group}"}}'
    cap = (
        "\nKafka: a group gives each partition to one consumer, so replicas beyond the topic's "
        "partition\ncount stay idle; keep --stream-max-replicas at or below it."
        if stream.partitioned
        else ""
    )
    notes: tuple[tuple[str, Any, str], ...] = (
        ("stream-deployment.yaml", sc.deployment(plan, secrets),
         f"The stream consumer: berth stream run, {stream.shown()}, group {group}.\n"
         "The server's image, ConfigMap and Secret; broker passwords come from the Secret.\n"
         f"Probes and Prometheus read /metrics on port {METRICS_PORT}, which opens once the "
         f"model is loaded.\nSIGTERM drains the batch in flight within {sc.DRAIN_SECONDS}s."),
        ("stream-service.yaml", sc.service(plan),
         "Headless Service of the consumer's metrics port, for its ServiceMonitor."),
        ("stream-hpa.yaml", sc.autoscaler(plan),
         f"Scales the consumer on its group's lag: ceil({lag} / {stream.target_lag}) replicas,\n"
         f"between {stream.min_replicas} and {stream.max_replicas}. The External metric needs "
         "prometheus-adapter with the rule in\nkubernetes/prometheus-adapter-values.yaml; "
         f"without it the consumer stays at {stream.min_replicas} replica(s).{cap}"),
        ("stream-pdb.yaml", sc.disruption_budget(plan),
         "At most one consumer pod down for voluntary disruptions."),
        ("stream-networkpolicy.yaml", sc.network_policy(plan),
         "Ingress to the metrics port only; egress to DNS, the brokers (the URLs' ports),\n"
         "PostgreSQL, HTTPS and OTLP. A Kafka cluster answers on every broker's own port: add "
         "them."),
        ("stream-servicemonitor.yaml", sc.service_monitor(plan),
         "Prometheus Operator: scrape /metrics of every consumer pod (lag, throughput, "
         "outcomes)."),
    )  # fmt: skip
    for name, document, note in notes:
        files.yaml(f"kubernetes/base/{name}", document, f"{note}\n{generated}")
    files.yaml(
        "kubernetes/prometheus-adapter-values.yaml",
        sc.prometheus_adapter_values(),
        "Values for the prometheus-adapter Helm chart (prometheus-community/prometheus-adapter):\n"
        "exposes berth_stream_consumer_lag as an external metric for the consumer's autoscaler.\n"
        "  helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter \\\n"
        "    -n monitoring --reuse-values -f kubernetes/prometheus-adapter-values.yaml \\\n"
        "    --set prometheus.url=http://PROMETHEUS-SERVICE.monitoring.svc\n"
        "Merge the rule into your values if you keep other external rules. Check it with\n"
        '  kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/NAMESPACE/'
        f'berth_stream_consumer_lag?labelSelector=group%3D{group}"\n{generated}',
    )
    return [name for name, _document, _note in notes]


def _write_kuberay(files: _Files, plan: Plan) -> None:
    generated = f"Generated by `berth build {plan.subject.reference}`; regenerate rather than edit."
    files.yaml(
        "kuberay/configmap.yaml",
        kubernetes.config_map(plan, kuberay.ray_config_map_name(plan)),
        f"Non-secret BERTH_* settings of the Ray pods (the same as the server's).\n{generated}",
    )
    files.yaml(
        "kuberay/rayservice.yaml",
        kuberay.ray_service(plan),
        "KubeRay RayService: Berth on Ray Serve with autoscaling replicas. Needs the KubeRay\n"
        f"operator, the image built from Dockerfile.ray ({plan.ray_image}) and the Secret\n"
        f"{plan.secret_name} (see kubernetes/base/secret.example.yaml). The replicas serve\n"
        f"{', '.join(plan.subject.served)} from the registry in BERTH_DATABASE_URL.\n{generated}",
    )
    files.yaml(
        "kuberay/kustomization.yaml",
        kz.base_kustomization(["configmap.yaml", "rayservice.yaml"]),
        f"kubectl apply -k kuberay (set a namespace here first).\n{generated}",
    )


# moving into place -------------------------------------------------------------------------


def _walk(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _move_into(stage: Path, out: Path, force: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if force:
        for name in GENERATED:
            old = out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
    for entry in stage.iterdir():
        entry.rename(out / entry.name)
