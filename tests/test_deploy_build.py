"""`berth build`: every generated file checked offline by the tools and schemas that judge it.

Kubernetes objects (base, rendered overlays, CronJobs, the Secret template, the Ray pods) are
validated strictly by kubernetes-validate against the newest Kubernetes it knows; the Prometheus
Operator and KubeRay custom resources against the schemas in tests/schemas/ (see its README for
where each comes from); compose.yaml against the Compose Specification schema; the Prometheus
files and rules by promtool; the Ray Serve config by Ray's own schema and Berth's builder. The
overlays are rendered by `berth.deploy.kustomize.render` and, where kubectl is installed, the
result must equal `kubectl kustomize`. Docker is not available here, so the image is never
built: the Dockerfile and .dockerignore are checked for their properties instead.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement

from berth import __version__
from berth.config import Settings
from berth.deploy import kustomize
from berth.deploy.build import BuildResult, build
from berth.deploy.cronjobs import kubernetes_schedule
from berth.deploy.dockerfile import healthcheck_command
from berth.deploy.plan import DEFAULT_TARGETS, TARGETS, BuildOptions
from berth.deploy.requirements import canonical, image_environment
from berth.deploy.requirements import render as render_requirements
from berth.deploy.source import RegistrySource
from berth.errors import InvalidInput
from berth.jobs.cron import Cron
from berth.jobs.schedules import ScheduleService
from berth.observability.alerts import AlertOptions, build_rules
from berth.observability.prometheus_config import ScrapeOptions, build_config
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.cli_modes import UNUSABLE_DATABASE, threaded_server
from tests.conftest import Run, register_churn, register_iris, require_service

SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSION = kubernetes_validate.latest_version()
SCHEDULE_PASSWORD = "pw-Zq81-not-for-manifests"
SCHEDULE_ARGS = [
    "churn@production",
    "--source", f"postgresql+psycopg://reader:{SCHEDULE_PASSWORD}@db.internal:5432/shop",
    "--table", "customers",
    "--sink", "scores.parquet",
]  # fmt: skip
BASE_KINDS = {
    "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "CronJob",
}  # fmt: skip
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
SECRET_NAME = re.compile(r"(?i)(secret|password|passwd|token|api_?key|private)")


# a built bundle, shared by the module ------------------------------------------------------


@dataclass(frozen=True)
class Built:
    result: BuildResult
    server_secret: bytes
    """The build machine's own server secret, which no file may contain."""

    @property
    def out(self) -> Path:
        return self.result.out

    def docs(self, relative: str) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all((self.out / relative).read_text()) if d]

    def doc(self, relative: str) -> dict[str, Any]:
        (found,) = self.docs(relative)
        return found


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, churn_files: tuple[Path, Path, Path]
) -> Iterator[Built]:
    """churn@production with two schedules (one disabled), built for every target."""
    root = tmp_path_factory.mktemp("deploy")
    settings = Settings(
        home=root / "home",
        database_url=f"sqlite:///{root / 'home' / 'registry.db'}",
        artifact_url=str(root / "home" / "artifacts"),
    )
    registry = Registry.from_settings(settings)
    secret = server_secret(
        KeyConfig.from_settings(settings)
    )  # the build machine has one before it builds
    register_churn(registry, churn_files)
    schedules = ScheduleService(registry.db)
    schedules.put("nightly", cron="30 2 * * 5-7", args=SCHEDULE_ARGS, timezone="Europe/Berlin")
    schedules.put("paused", cron="@hourly", args=SCHEDULE_ARGS, enabled=False)
    options = BuildOptions(targets=TARGETS, replicas=3, max_replicas=9, cpu=0.75, memory="768Mi")
    result = build(RegistrySource(registry), "churn@production", root / "bundle", options)
    yield Built(result, secret)
    registry.db.dispose()


# validation helpers ------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD's OpenAPI schema as kubectl --validate=strict reads it: listed properties only."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft202012Validator]:
    found = {}
    for path in SCHEMAS.glob("*_*.json"):
        crd = json.loads(path.read_text())
        schema = strict(crd["openAPIV3Schema"])
        jsonschema.Draft202012Validator.check_schema(schema)
        found[(f"{crd['group']}/{crd['version']}", crd["kind"])] = jsonschema.Draft202012Validator(
            schema
        )
    return found


def validate(obj: dict[str, Any]) -> None:
    """Strict schema validation, Kubernetes' own or the vendored CRD's, plus what schemas miss:
    names, label values and resource quantities."""
    key = (obj["apiVersion"], obj["kind"])
    if key in crd_validators():
        errors = [e.message for e in crd_validators()[key].iter_errors(obj)]
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: {errors}"
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    meta = obj["metadata"]
    assert DNS_LABEL.fullmatch(meta["name"]), meta["name"]
    assert len(meta["name"]) <= 63, meta["name"]
    for node in _walk(obj):
        if not isinstance(node, dict):
            continue
        labels = (
            node["metadata"].get("labels", {}) if isinstance(node.get("metadata"), dict) else {}
        )
        for value in labels.values():
            assert len(value) <= 63, value
            assert LABEL_VALUE.fullmatch(value), value
        if {"requests", "limits"} & set(node):
            for amount in [*node.get("requests", {}).values(), *node.get("limits", {}).values()]:
                assert QUANTITY.match(str(amount)), amount


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if obj["kind"] == "Deployment":
        return [spec["template"]["spec"]]
    return []


def assert_restricted(pod: dict[str, Any]) -> None:
    """The `restricted` Pod Security Standard, plus the read-only root filesystem."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert all("hostPath" not in v for v in pod["volumes"])
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in ("/var/lib/berth", "/tmp"):  # the writable places, both emptyDirs
            assert "emptyDir" in volumes[mounts[path]]


# Kubernetes ----------------------------------------------------------------------------------


def test_every_kubernetes_object_validates_strictly(built: Built) -> None:
    base = built.out / "kubernetes" / "base"
    listed = built.doc("kubernetes/base/kustomization.yaml")["resources"]
    objects = [d for name in listed for d in built.docs(f"kubernetes/base/{name}")]
    assert {o["kind"] for o in objects} == BASE_KINDS
    secret = built.doc("kubernetes/base/secret.example.yaml")
    assert "secret.example.yaml" not in listed  # a template is never applied by kustomize
    (ray_config,) = built.docs("kuberay/configmap.yaml")
    assert ray_config["metadata"]["name"] == "berth-churn-ray"
    others = [secret, ray_config]
    for obj in [*objects, *others]:
        validate(obj)
    assert sorted(p.name for p in base.iterdir()) == sorted(
        [*listed, "kustomization.yaml", "secret.example.yaml"]
    )


def test_the_deployment_is_restricted_probed_and_bounded(built: Built) -> None:
    deployment = built.doc("kubernetes/base/deployment.yaml")
    (pod,) = pod_specs(deployment)
    assert_restricted(pod)
    (container,) = pod["containers"]
    assert container["image"] == built.result.plan.image == "berth-churn:1"
    assert container["resources"] == {
        "requests": {"cpu": "750m", "memory": "768Mi"},
        "limits": {"cpu": "1500m", "memory": "768Mi"},
    }
    probes = {name: container[f"{name}Probe"] for name in ("startup", "liveness", "readiness")}
    assert probes["startup"]["httpGet"] == {"path": "/health", "port": "http"}
    assert probes["liveness"]["httpGet"] == {"path": "/health", "port": "http"}
    # gRPC's health service, on by default: SERVING exactly when /ready answers 200
    assert probes["readiness"]["grpc"] == {"port": 8322}
    assert container["ports"] == [
        {"name": "http", "containerPort": 8321, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8322, "protocol": "TCP"},
    ]
    assert container["envFrom"] == [
        {"configMapRef": {"name": "berth-churn"}},
        {"secretRef": {"name": "berth-churn-secrets"}},
    ]
    assert "replicas" not in deployment["spec"]  # the HPA's to set
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = built.doc("kubernetes/base/service.yaml")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for kind in ("pdb", "networkpolicy"):
        spec = built.doc(f"kubernetes/base/{kind}.yaml")["spec"]
        chosen = spec.get("selector") or spec["podSelector"]
        assert chosen["matchLabels"] == selector
    config = built.doc("kubernetes/base/configmap.yaml")["data"]
    assert config["BERTH_HOME"] == "/var/lib/berth"
    assert config["BERTH_PORT"] == "8321"
    assert not [k for k in config if SECRET_NAME.search(k)]


def test_the_autoscaler_uses_cpu_and_requests_in_flight(built: Built) -> None:
    hpa = built.doc("kubernetes/base/hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "berth-churn",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 9)
    cpu, in_flight = spec["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    assert cpu["resource"]["target"]["type"] == "Utilization"
    assert in_flight == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "berth_requests_in_flight"},
            "target": {"type": "AverageValue", "averageValue": "8"},
        },
    }
    # the metric the Pods target names is one Berth's /metrics really exposes
    from berth.observability import metrics

    assert metrics.REQUESTS_IN_FLIGHT._name == "berth_requests_in_flight"


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_overlays_render_to_valid_objects_in_their_namespace(built: Built, overlay: str) -> None:
    objects = kustomize.render(built.out / "kubernetes" / "overlays" / overlay)
    namespace = f"berth-{overlay}"
    kinds = {o["kind"] for o in objects}
    assert kinds == BASE_KINDS | {"Namespace"}
    for obj in objects:
        validate(obj)
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == namespace
            assert obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert obj["metadata"]["namespace"] == namespace
        for pod in pod_specs(obj):
            assert_restricted(pod)
            assert pod["containers"][0]["image"] == "berth-churn:1"
    by_kind = {o["kind"]: o for o in objects}
    hpa, deployment = by_kind["HorizontalPodAutoscaler"]["spec"], by_kind["Deployment"]["spec"]
    expected = {"staging": (1, 2), "production": (3, 9)}[overlay]
    assert "replicas" not in deployment
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == expected
    assert (
        deployment["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "768Mi"
    )


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_the_offline_renderer_matches_kubectl_kustomize(built: Built, overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        require_service("kubectl", "not on PATH; it renders kustomizations (`kubectl kustomize`)")
    assert kubectl is not None
    folder = built.out / "kubernetes" / "overlays" / overlay
    rendered = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    theirs = {_key(d): d for d in yaml.safe_load_all(rendered.stdout) if d}
    ours = {_key(d): d for d in kustomize.render(folder)}
    assert theirs == ours


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def test_the_renderer_refuses_what_it_does_not_apply(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(InvalidInput, match="commonLabels"):
        kustomize.render(tmp_path)


# CronJobs ------------------------------------------------------------------------------------


def test_one_cronjob_per_enabled_schedule_without_its_password(built: Built) -> None:
    files = sorted(p.name for p in (built.out / "kubernetes" / "base").glob("cronjob-*.yaml"))
    assert files == ["cronjob-berth-churn-nightly.yaml"]  # the disabled one is left out
    cronjob = built.doc(f"kubernetes/base/{files[0]}")
    spec = cronjob["spec"]
    assert spec["schedule"] == "30 2 * * 0,5,6"  # Sunday as 0: Kubernetes refuses 7
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid"
    (pod,) = pod_specs(cronjob)
    assert_restricted(pod)
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    variable = "BERTH_SCHEDULE_NIGHTLY_SECRET_1"
    expected = [*SCHEDULE_ARGS]
    expected[2] = f"postgresql+psycopg://reader:$({variable})@db.internal:5432/shop"
    assert container["command"] == ["berth", "batch", "run", *expected]
    assert container["env"] == [
        {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": "berth-churn-secrets", "key": variable}},
        }
    ]
    secret = built.doc("kubernetes/base/secret.example.yaml")["stringData"]
    assert variable in secret
    assert "REPLACE" in secret[variable]
    for path in built.out.rglob("*"):
        if path.is_file() and path.suffix != ".whl":
            assert SCHEDULE_PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "cron",
    ["@daily", "@weekly", "0 0 * * 7", "15 3 * * 5-7", "0 8 1-7 * sun", "*/20 9-17 * * mon-fri",
     "0 0 1 * 1-7/2", "5/15 * * jan,jul *"],
)  # fmt: skip
def test_schedules_keep_their_ticks_in_kubernetes_syntax(cron: str) -> None:
    converted = kubernetes_schedule(cron)
    fields = converted.split()
    assert len(fields) == 5
    assert not converted.startswith("@")
    for entry in fields[4].split(","):  # Kubernetes knows weekdays 0-6 (and names) only
        for value in entry.split("/")[0].split("-"):
            assert value == "*" or value.isalpha() or 0 <= int(value) <= 6, converted
    start = datetime(2030, 3, 1, tzinfo=UTC)
    ours, theirs = Cron(cron, "Europe/Berlin"), Cron(converted, "Europe/Berlin")
    assert ours.upcoming(start, 40) == theirs.upcoming(start, 40)


# Prometheus Operator -------------------------------------------------------------------------


def test_service_monitor_scrapes_the_service_port(built: Built) -> None:
    monitor = built.doc("kubernetes/base/servicemonitor.yaml")
    service = built.doc("kubernetes/base/service.yaml")
    validate(monitor)
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [{**endpoint, "scheme": "ftp"}]}}
    assert list(
        crd_validators()[("monitoring.coreos.com/v1", "ServiceMonitor")].iter_errors(broken)
    )


def test_prometheus_rule_is_berths_rules_for_the_service_job(built: Built, tmp_path: Path) -> None:
    rule = built.doc("kubernetes/base/prometheusrule.yaml")
    validate(rule)
    job = built.doc("kubernetes/base/service.yaml")["metadata"]["name"]
    assert rule["spec"]["groups"] == build_rules(AlertOptions(job=job))["groups"]
    down = next(
        r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "BerthTargetDown"
    )
    assert f'job="{job}"' in down["expr"]
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "not on PATH; `apt-get install prometheus` provides it")
    assert promtool is not None
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# KubeRay -------------------------------------------------------------------------------------


def test_rayservice_matches_the_crd_and_its_pods_validate(built: Built) -> None:
    service = built.doc("kuberay/rayservice.yaml")
    validate(service)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["enableInTreeAutoscaling"] is True
    (workers,) = cluster["workerGroupSpecs"]
    assert (workers["groupName"], workers["minReplicas"], workers["maxReplicas"]) == ("berth", 3, 9)
    assert workers["replicas"] == workers["minReplicas"]
    templates = [cluster["headGroupSpec"]["template"], workers["template"]]
    for template in templates:
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "x"},
            "template": template,
        }
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
        (container,) = template["spec"]["containers"]
        assert container["image"] == "berth-churn:1-ray"
        assert container["envFrom"] == [
            {"configMapRef": {"name": "berth-churn-ray"}},  # its own: kuberay's, not the server's
            {"secretRef": {"name": "berth-churn-secrets"}},
        ]
        assert container["securityContext"]["runAsNonRoot"] is True
        assert "serve" in {p["name"] for p in container["ports"]}
    missing_group = {**workers}
    del missing_group["groupName"]
    broken = {
        **service,
        "spec": {
            **service["spec"],
            "rayClusterConfig": {**cluster, "workerGroupSpecs": [missing_group]},
        },
    }
    assert list(crd_validators()[("ray.io/v1", "RayService")].iter_errors(broken))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own pydantic use
def test_serve_config_is_valid_for_ray_and_for_berths_builder(built: Built) -> None:
    try:
        from ray.serve.config import AutoscalingConfig
        from ray.serve.schema import (
            DeploymentSchema,
            HTTPOptionsSchema,
            ServeApplicationSchema,
            ServeDeploySchema,
        )

        from berth.deploy.ray_options import DEPLOYMENT_NAME
        from berth.deploy.ray_serve import build_app
    except ImportError as exc:
        require_service("Ray Serve", f"cannot import it ({exc}); install berth[ray]")
    config = yaml.safe_load(built.doc("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    # Ray ignores unknown keys, so a misspelt one would be silently dropped: check each level.
    assert set(config) <= set(ServeDeploySchema.model_fields)
    assert set(config["http_options"]) <= set(HTTPOptionsSchema.model_fields)
    (application,) = config["applications"]
    assert set(application) <= set(ServeApplicationSchema.model_fields)
    assert application["import_path"] == "berth.deploy.ray_serve:build_app"
    (deployment,) = application["deployments"]
    assert deployment["name"] == DEPLOYMENT_NAME
    assert set(deployment) <= set(DeploymentSchema.model_fields)
    autoscaling = deployment["autoscaling_config"]
    assert set(autoscaling) == {
        "min_replicas",
        "initial_replicas",
        "max_replicas",
        "target_ongoing_requests",
    }
    assert set(autoscaling) <= set(AutoscalingConfig.model_fields)
    assert deployment["ray_actor_options"] == {"num_cpus": 0.75}
    assert application["args"]["served"] == ["churn@production"]
    build_app(application["args"])  # Berth's builder accepts exactly these args


# Dockerfile and .dockerignore ----------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, rest = whole.strip().partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for step in steps:
        if step[0] == "FROM":
            out.append([])
        out[-1].append(step)
    return out


def test_dockerfile_is_multi_stage_slim_non_root_and_healthchecked(built: Built) -> None:
    steps = instructions((built.out / "Dockerfile").read_text())
    builder, final = stages(steps)
    assert builder[0][1].endswith(" AS builder")
    base = final[0][1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim(-\w+)?", base), base  # pinned, slim
    assert builder[0][1].split()[0] == base
    users = [args for keyword, args in final if keyword == "USER"]
    assert users
    assert re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), users  # numeric, not 0
    (health,) = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert json.loads(health.split(" CMD ", 1)[1]) == healthcheck_command(8321)
    assert "/health" in health
    (command,) = [json.loads(args) for keyword, args in final if keyword == "CMD"]
    assert command[:4] == ["berth", "serve", "--bundle", "/opt/berth/model"]
    assert "--trust-pickle" not in command  # churn is a skops file, no pickle to vouch for
    assert ("COPY", "model/ /opt/berth/model/") in final
    assert ("EXPOSE", "8321 8322") in final
    assert command[-2:] == ["--grpc-port", "8322"]
    for keyword, args in steps:
        if keyword in ("ENV", "ARG"):
            assert not SECRET_NAME.search(args), f"{keyword} {args}"


def test_requirements_are_pinned_complete_and_what_runs_here(built: Built) -> None:
    lines = [
        line for line in (built.out / "requirements.txt").read_text().splitlines()
        if line and not line.startswith(("#", "--"))
    ]  # fmt: skip
    pins = {}
    for line in lines:
        name, sep, version = line.partition("==")
        assert sep == "==", line
        assert re.fullmatch(r"[a-z0-9-]+", name), line
        assert version, line
        pins[name] = version
        assert importlib.metadata.version(name) == version
    assert {"fastapi", "uvicorn", "scikit-learn", "skops", "psycopg", "psycopg-binary"} <= set(pins)
    assert "berth" not in pins  # it is the wheel
    # like `pip check` in the image: each pinned distribution's requirements are pinned too
    environment = image_environment()
    for name in pins:
        for text in importlib.metadata.distribution(name).requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(
                {**environment, "extra": ""}
            ):
                assert canonical(requirement.name) in pins, f"{name} needs {requirement}"
                assert requirement.specifier.contains(
                    pins[canonical(requirement.name)], prereleases=True
                )
    (wheel,) = (built.out / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "berth/deploy/bundle.py" in names
        assert "berth/py.typed" in names
        assert any(n.startswith("berth/store/migrations/versions/0001") for n in names)
        metadata = archive.read(f"berth-{__version__}.dist-info/METADATA").decode()
    assert f"Version: {__version__}" in metadata


def dockerignored(rules: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    decided = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            decided = not negate
    return decided


def test_dockerignore_sends_what_the_dockerfiles_copy_and_nothing_secret(built: Built) -> None:
    rules = [
        line.strip() for line in (built.out / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    for kept in [
        "Dockerfile",
        "requirements.txt",
        "requirements-ray.txt",
        "wheels/berth.whl",
        "model/berth-bundle.json",
        "model/artifact/churn.skops",
        "model/artifact/.env",
    ]:
        assert not dockerignored(rules, kept), kept
    for dropped in [
        ".env",
        ".env.production",
        ".git/config",
        "pkg/x.pyc",
        "a/__pycache__/m.pyc",
        "compose.yaml",
        "kubernetes/base/deployment.yaml",
        "prometheus/prometheus.yml",
    ]:
        assert dockerignored(rules, dropped), dropped
    for dockerfile in ("Dockerfile", "Dockerfile.ray"):
        for keyword, args in instructions((built.out / dockerfile).read_text()):
            if keyword == "COPY" and not args.startswith("--from"):
                source = args.split()[0]
                assert (built.out / source).exists(), source
                assert not dockerignored(rules, source.rstrip("/")), source


def test_pytorch_builds_come_from_pytorchs_index() -> None:
    text = render_requirements({"torch": "2.13.0+cpu", "numpy": "2.1.0"}, "# pins\n")
    assert text.splitlines() == [
        "# pins",
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        "numpy==2.1.0",
        "torch==2.13.0+cpu",
    ]


def test_ray_dockerfile_pins_ray_and_berth(built: Built) -> None:
    steps = instructions((built.out / "Dockerfile.ray").read_text())
    assert steps[0] == ("FROM", "rayproject/ray:2.60.0-py311")
    assert ("USER", "1000") in steps
    ray = set((built.out / "requirements-ray.txt").read_text().splitlines())
    server = set((built.out / "requirements.txt").read_text().splitlines())
    assert "ray==2.60.0" in ray
    assert server <= ray


# compose ---------------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_spec(built: Built) -> None:
    compose = built.doc("compose.yaml")
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(compose)]
    assert not errors
    services = compose["services"]
    assert set(services) == {"berth", "postgres", "redis", "prometheus"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency in service.get("depends_on", {}).values():
            assert dependency == {"condition": "service_healthy"}
    berth = services["berth"]
    assert berth["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert set(berth["depends_on"]) == {"postgres", "redis"}
    assert set(services["prometheus"]["depends_on"]) == {"berth"}
    assert berth["healthcheck"]["test"] == ["CMD", *healthcheck_command(8321)]
    assert berth["read_only"] is True
    assert berth["cap_drop"] == ["ALL"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_holds_no_secret_and_the_env_template_has_only_placeholders(built: Built) -> None:
    compose = built.doc("compose.yaml")
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert not [k for k in environment if SECRET_NAME.search(k)], name
    assert compose["services"]["berth"]["env_file"] == [".env"]
    example = dict(
        line.split("=", 1) for line in (built.out / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    for key in ("BERTH_SECRET_KEY", "POSTGRES_PASSWORD"):
        assert "REPLACE" in example[key]
    assert f":{example['POSTGRES_PASSWORD']}@postgres:5432/" in example["BERTH_DATABASE_URL"]
    # The build machine's own server secret is nowhere in the bundle.
    for path in built.out.rglob("*"):
        if path.is_file():
            assert built.server_secret not in path.read_bytes(), path


def test_prometheus_gets_berths_scrape_config_and_rules(built: Built) -> None:
    compose = built.doc("compose.yaml")
    mounts = compose["services"]["prometheus"]["volumes"]
    config_path = built.out / "prometheus" / "prometheus.yml"
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./prometheus/berth-rules.yml:/etc/prometheus/berth-rules.yml:ro" in mounts
    config = yaml.safe_load(config_path.read_text())
    expected = build_config(ScrapeOptions(targets=("berth:8321",), rule_files=("berth-rules.yml",)))
    assert config == expected
    assert yaml.safe_load(
        (built.out / "prometheus" / "berth-rules.yml").read_text()
    ) == build_rules(AlertOptions(job="berth"))
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "not on PATH; `apt-get install prometheus` provides it")
    assert promtool is not None
    for command in (["check", "config", str(config_path)],
                    ["check", "rules", str(built.out / "prometheus" / "berth-rules.yml")]):  # fmt: skip
        checked = subprocess.run([promtool, *command], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


# the command ---------------------------------------------------------------------------------


@pytest.fixture
def cli(run_both: Run, settings: Settings, churn_files: tuple[Path, Path, Path]) -> Run:
    """`berth` in process, in local and in remote mode (tests/cli_modes.py), with
    churn@production registered and a schedule."""
    registry = Registry.from_settings(settings)
    register_churn(registry, churn_files)
    ScheduleService(registry.db).put("hourly", cron="@hourly", args=SCHEDULE_ARGS)
    # Another model's schedule: its job would need that model's libraries, not in this image.
    other = ["fraud@production", "--source", "in.csv", "--sink", "out.parquet"]
    ScheduleService(registry.db).put("fraud-nightly", cron="0 2 * * *", args=other)
    EndpointService(registry).create("checkout", "churn@production")
    registry.db.dispose()
    return run_both


def test_build_command_writes_the_asked_targets_and_lists_them(cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    done = cli("build", "churn@production", "--out", str(out), "--target", "kubernetes",
               "--image", "registry.example.com/ml/churn:2026-01", "--port", "9100")  # fmt: skip
    assert done.code == 0, done.err
    assert "kubernetes/base/cronjob-berth-churn-hourly.yaml" in done.out
    assert "fraud" not in done.out
    assert "model/berth-bundle.json" in done.out
    assert "model/artifact/ (1 file(s))" in done.out
    assert not (out / "compose.yaml").exists()
    assert not (out / "kuberay").exists()
    assert (out / "Dockerfile").is_file()
    assert (out / ".dockerignore").is_file()
    deployment = yaml.safe_load((out / "kubernetes/base/deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/ml/churn:2026-01"
    assert container["ports"][0]["containerPort"] == 9100
    overlay = yaml.safe_load(
        (out / "kubernetes/overlays/production/kustomization.yaml").read_text()
    )
    assert overlay["images"] == [{"name": "registry.example.com/ml/churn", "newTag": "2026-01"}]
    manifest = json.loads((out / "model" / "berth-bundle.json").read_text())
    assert (manifest["model"], manifest["version"], manifest["flavor"]) == ("churn", 1, "sklearn")


def test_build_command_refuses_an_unknown_reference(cli: Run, tmp_path: Path) -> None:
    done = cli("build", "nosuch", "--out", str(tmp_path / "b"))
    assert done.code == 1
    assert "neither a registered model nor an endpoint" in done.err
    assert not (tmp_path / "b").exists()
    missing_version = cli("build", "churn:7", "--out", str(tmp_path / "b"))
    assert missing_version.code == 1
    assert "has no version 7" in missing_version.err


def test_build_command_refuses_a_non_empty_folder_unless_forced(cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / ".env").write_text("BERTH_SECRET_KEY=mine\n")
    refused = cli("build", "churn", "--out", str(out), "--target", "compose")
    assert refused.code == 1
    assert "--force" in refused.err
    assert sorted(p.name for p in out.iterdir()) == [".env"]
    (out / "kubernetes").mkdir()
    (out / "kubernetes" / "stale.yaml").write_text("kind: Stale\n")
    forced = cli("build", "churn", "--out", str(out), "--target", "compose", "--force")
    assert forced.code == 0, forced.err
    assert (out / ".env").read_text() == "BERTH_SECRET_KEY=mine\n"  # not the build's to touch
    assert not (out / "kubernetes").exists()  # a previous build's output is replaced
    assert (out / "compose.yaml").is_file()


def test_an_endpoint_is_served_from_the_registry_and_never_baked(cli: Run, tmp_path: Path) -> None:
    baked = cli("build", "checkout", "--out", str(tmp_path / "b1"), "--model-source", "bake")
    assert baked.code == 1
    assert "--model-source registry" in baked.err
    done = cli("build", "checkout", "--out", str(tmp_path / "b2"), "--target", "kubernetes")
    assert done.code == 0, done.err
    out = tmp_path / "b2"
    assert not (out / "model").exists()
    steps = instructions((out / "Dockerfile").read_text())
    assert not [args for keyword, args in steps if keyword == "COPY" and "model" in args]
    (command,) = [json.loads(args) for keyword, args in steps if keyword == "CMD"]
    assert command[:3] == ["berth", "serve", "churn:1"]
    secret = yaml.safe_load((out / "kubernetes/base/secret.example.yaml").read_text())
    assert "BERTH_ARTIFACT_URL" in secret["stringData"]


def test_build_command_checks_its_options(cli: Run, tmp_path: Path) -> None:
    for args, message in [
        (["--image", "no-tag"], "NAME:TAG"),
        (["--memory", "lots"], "quantity"),
        (["--replicas", "5", "--max-replicas", "3"], "--max-replicas"),
        (["--target", "helm"], "helm"),
    ]:
        done = cli("build", "churn", "--out", str(tmp_path / "b"), *args)
        assert done.code != 0, args
        assert message in done.err, (args, done.err)
    assert not (tmp_path / "b").exists()


def test_default_targets_are_compose_and_kubernetes(cli: Run, tmp_path: Path) -> None:
    """KubeRay pins Ray (the `berth[ray]` extra), so it is written only when asked for."""
    out = tmp_path / "bundle"
    done = cli("build", "churn@production", "--out", str(out))
    assert done.code == 0, done.err
    assert DEFAULT_TARGETS == ("compose", "kubernetes")
    assert (out / "compose.yaml").is_file()
    assert (out / "kubernetes" / "base" / "deployment.yaml").is_file()
    assert not (out / "kuberay").exists()
    assert not (out / "Dockerfile.ray").exists()


def test_a_baked_pickle_is_vouched_for_by_the_images_command(
    settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """The bundle's manifest cannot vouch for its own pickle; the image's command does."""
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    build(
        RegistrySource(registry),
        "iris@production",
        tmp_path / "b",
        BuildOptions(targets=("compose",)),
    )
    registry.db.dispose()
    steps = instructions((tmp_path / "b" / "Dockerfile").read_text())
    (command,) = [json.loads(args) for keyword, args in steps if keyword == "CMD"]
    assert command[:5] == ["berth", "serve", "--bundle", "/opt/berth/model", "--trust-pickle"]


# remote mode: the same bundle ----------------------------------------------------------------

DIRECTORY_MODEL = """
import numpy as np


class Scaled:
    def load(self, path):
        self.weights = np.loadtxt(path / "data" / "weights.txt")

    def predict(self, inputs):
        return np.asarray(inputs, dtype=float) @ self.weights
"""
# Over 100 bytes and not ASCII: a tar member name that needs a PAX header.
LONG_NAME = "données-" + "très-long-" * 12 + ".txt"


def _register_for_bundles(settings: Settings, churn_files: tuple[Path, Path, Path]) -> None:
    """churn:1 (production), churn:2 (staging: reference data, lineage, metrics, tags) and a
    directory model `scaled` (python) with a nested folder and a long non-ASCII file name."""
    from berth.registration.service import RegisterRequest, register
    from berth.registry.versions import Lineage

    registry = Registry.from_settings(settings)
    model, sample, signature = churn_files
    register_churn(registry, churn_files)
    register(
        registry,
        RegisterRequest(
            name="churn", path=model, sample=sample, signature=signature, aliases=("staging",),
            reference=sample, metrics={"auc": 0.91}, tags={"git_sha": "abc123"},
            description="the candidate", lineage=Lineage("churn", 1, {"method": "retrain"}),
        ),
    )  # fmt: skip
    folder = settings.home.parent / "scaled"
    (folder / "data").mkdir(parents=True)
    (folder / "model.py").write_text(DIRECTORY_MODEL)
    (folder / "data" / "weights.txt").write_text("1\n10\n100\n")
    (folder / "data" / LONG_NAME).write_bytes(bytes(range(256)) * 40)
    scaled_sample = settings.home.parent / "scaled.npy"
    np.save(scaled_sample, np.array([[1.0, 2.0, 3.0]]))
    register(registry, RegisterRequest(name="scaled", path=folder, sample=scaled_sample))
    ScheduleService(registry.db).put("hourly", cron="@hourly", args=SCHEDULE_ARGS)
    registry.db.dispose()


def _bundle_files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: its bytes (a manifest without its build time) and its mode."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if path.name == "berth-bundle.json":
            manifest = json.loads(content)
            assert datetime.fromisoformat(manifest.pop("built_at")).tzinfo is not None
            content = json.dumps(manifest, indent=2, sort_keys=True).encode()
        found[path.relative_to(root).as_posix()] = (content, path.stat().st_mode & 0o777)
    return found


def test_remote_mode_writes_the_bundle_local_mode_writes(
    run: Run,
    settings: Settings,
    churn_files: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same files, bytes and modes (the manifest's build time aside), same output, from a
    server reached with a key only: a file model with everything a manifest carries, and a
    directory model (its tar has a nested folder and a long non-ASCII name)."""
    _register_for_bundles(settings, churn_files)
    out = tmp_path / "bundle"
    builds = {
        "churn@staging": ["--target", "kubernetes", "--target", "compose"],
        "scaled": ["--target", "compose"],
    }
    local = {}
    for reference, options in builds.items():
        done = run("build", reference, "--out", str(out), *options, "--force")
        assert done.code == 0, done.err
        local[reference] = (done, _bundle_files(out))
    registry = Registry.from_settings(settings)
    _info, secret = KeyService(
        registry.db, server_secret(KeyConfig.from_settings(settings))
    ).create("ci-build", ("admin",))
    registry.db.dispose()
    with threaded_server(settings) as url:
        monkeypatch.setenv("BERTH_SERVER", url)
        monkeypatch.setenv("BERTH_API_KEY", secret)
        monkeypatch.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
        for reference, options in builds.items():
            done = run("build", reference, "--out", str(out), *options, "--force")
            assert done == local[reference][0]
            remote_files = _bundle_files(out)
            local_files = local[reference][1]
            assert sorted(remote_files) == sorted(local_files)
            for name, (content, mode) in local_files.items():
                assert remote_files[name] == (content, mode), name
    churn, scaled = (local[reference][1] for reference in builds)
    manifest = json.loads(churn["model/berth-bundle.json"][0])
    assert manifest["version"] == 2
    assert manifest["reference_stats"]["rows"] > 0
    assert manifest["lineage"] == {"source": "churn:1", "method": "retrain"}
    assert "kubernetes/base/cronjob-berth-churn-hourly.yaml" in churn
    assert f"model/artifact/data/{LONG_NAME}" in scaled
    assert scaled[f"model/artifact/data/{LONG_NAME}"][1] == 0o644
