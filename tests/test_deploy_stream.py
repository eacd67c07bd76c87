"""`berth build --stream-source ...`: the stream consumer's Deployment, autoscaler and monitoring.

Every object is validated strictly as tests/test_deploy_build.py validates the server's
(kubernetes-validate for Kubernetes kinds, the vendored CRD schemas for the ServiceMonitor and
PrometheusRule), the overlays are rendered, and the prometheus-adapter query the autoscaler
depends on is evaluated by promtool against series shaped like two replicas' reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import redis
import yaml

from berth.config import Settings
from berth.deploy import kustomize
from berth.deploy.build import build
from berth.deploy.plan import BuildOptions
from berth.deploy.source import RegistrySource
from berth.deploy.stream_consumer import ADAPTER_QUERY
from berth.deploy.stream_options import ConsumerOptions
from berth.errors import InvalidInput
from berth.jobs.stream import metrics as stream_metrics
from berth.jobs.stream.transport import SCHEMES
from berth.observability.alerts import AlertOptions, build_rules
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from tests.conftest import Run, free_port, register_churn, require_service
from tests.stream_helpers import (
    consumer_env,
    customers,
    kill_leftovers,
    run_consumer,
    scraper,
    start_consumer,
    wait_for,
)
from tests.test_deploy_build import SCHEMAS, Built, assert_restricted, pod_specs, validate

BROKER_PASSWORD = "pw-Kq27-never-in-manifests"
SOURCE = f"redis://:{BROKER_PASSWORD}@redis.internal:6380/0?stream=events"
SINK = "nats://nats.internal:4222/predictions"
REDIS = "redis://127.0.0.1:6379"
STREAM_FILES = [
    "stream-deployment.yaml", "stream-service.yaml", "stream-hpa.yaml", "stream-pdb.yaml",
    "stream-networkpolicy.yaml", "stream-servicemonitor.yaml",
]  # fmt: skip
STREAM_KINDS = {
    "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
    "ServiceMonitor",
}  # fmt: skip


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, churn_files: tuple[Path, Path, Path]
) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("stream-deploy")
    settings = Settings(
        home=root / "home",
        database_url=f"sqlite:///{root / 'home' / 'registry.db'}",
        artifact_url=str(root / "home" / "artifacts"),
    )
    found = Registry.from_settings(settings)
    register_churn(found, churn_files)
    EndpointService(found).create("checkout", "churn@production")
    yield found
    found.db.dispose()


def consumer(**changes: Any) -> ConsumerOptions:
    values: dict[str, Any] = {
        "source": SOURCE,
        "sink": SINK,
        "min_replicas": 2,
        "max_replicas": 6,
        "target_lag": 500,
        "batch_size": 64,
    }
    return ConsumerOptions(**{**values, **changes})


@pytest.fixture(scope="module")
def built(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """churn@production baked, for Kubernetes and compose, with a consumer."""
    options = BuildOptions(targets=("kubernetes", "compose"), stream=consumer())
    out = tmp_path_factory.mktemp("bundle") / "b"
    return Built(build(RegistrySource(registry), "churn@production", out, options), b"")


def base_objects(built: Built) -> dict[tuple[str, str], dict[str, Any]]:
    listed = built.doc("kubernetes/base/kustomization.yaml")["resources"]
    objects = [d for name in listed for d in built.docs(f"kubernetes/base/{name}")]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


# the objects -------------------------------------------------------------------------------


def test_the_consumer_objects_are_in_the_base_and_validate_strictly(built: Built) -> None:
    listed = built.doc("kubernetes/base/kustomization.yaml")["resources"]
    assert set(STREAM_FILES) <= set(listed)
    objects = base_objects(built)
    stream = {k: o for k, o in objects.items() if k[1] == "berth-churn-stream"}
    assert {kind for kind, _ in stream} == STREAM_KINDS
    for obj in objects.values():
        validate(obj)
    validate(built.doc("kubernetes/base/secret.example.yaml"))
    # the server's objects still select the server's pods only, the consumer's its own
    for kind in ("Service", "PodDisruptionBudget", "ServiceMonitor"):
        server = objects[(kind, "berth-churn")]["spec"]["selector"]
        consumer_selector = stream[(kind, "berth-churn-stream")]["spec"]["selector"]
        server_labels = server.get("matchLabels", server)
        consumer_labels = consumer_selector.get("matchLabels", consumer_selector)
        assert server_labels["app.kubernetes.io/component"] == "server"
        assert consumer_labels["app.kubernetes.io/component"] == "stream"


def test_the_consumer_runs_the_baked_model_from_the_servers_image_and_settings(
    built: Built,
) -> None:
    deployment = built.doc("kubernetes/base/stream-deployment.yaml")
    server = built.doc("kubernetes/base/deployment.yaml")
    (pod,) = pod_specs(deployment)
    assert_restricted(pod)
    (container,) = pod["containers"]
    (server_container,) = pod_specs(server)[0]["containers"]
    for same in ("image", "envFrom", "resources", "volumeMounts"):
        assert container[same] == server_container[same], same
    assert container["command"] == [
        "berth", "stream", "run", "--bundle", "/opt/berth/model",
        "--source", "redis://:$(BERTH_STREAM_SECRET_1)@redis.internal:6380/0?stream=events",
        "--sink", SINK, "--group", "berth-churn", "--batch-size", "64",
        "--metrics-host", "0.0.0.0", "--metrics-port", "9464",
    ]  # fmt: skip
    assert container["env"] == [
        {
            "name": "BERTH_STREAM_SECRET_1",
            "valueFrom": {
                "secretKeyRef": {"name": "berth-churn-secrets", "key": "BERTH_STREAM_SECRET_1"}
            },
        }
    ]
    secret = built.doc("kubernetes/base/secret.example.yaml")["stringData"]
    assert "REPLACE" in secret["BERTH_STREAM_SECRET_1"]
    for path in built.out.rglob("*"):
        if path.is_file():
            assert BROKER_PASSWORD.encode() not in path.read_bytes(), path
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert "lifecycle" not in container  # no Service sends it traffic: nothing to wait for
    assert "replicas" not in deployment["spec"]  # the autoscaler's to set
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxUnavailable": 1, "maxSurge": 0}


def test_the_consumer_command_is_one_berth_stream_run_accepts(built: Built) -> None:
    """The Deployment's arguments parse as `berth stream run` parses them."""
    import typer.main

    from berth.cli.stream import app

    deployment = built.doc("kubernetes/base/stream-deployment.yaml")
    command = pod_specs(deployment)[0]["containers"][0]["command"]
    assert command[:3] == ["berth", "stream", "run"]
    click_command = typer.main.get_command(app)
    context = click_command.make_context("stream", list(command[2:]), resilient_parsing=True)
    run = click_command.get_command(context, "run")
    assert run is not None
    parsed = run.make_context("run", list(command[3:])).params
    assert parsed["bundle"] == Path("/opt/berth/model")
    assert (parsed["group"], parsed["batch_size"], parsed["metrics_port"]) == (
        "berth-churn",
        64,
        9464,
    )
    assert parsed["metrics_host"] == "0.0.0.0"


def test_the_autoscaler_scales_on_the_groups_lag_per_replica(built: Built) -> None:
    hpa = built.doc("kubernetes/base/stream-hpa.yaml")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "berth-churn-stream",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    assert spec["metrics"] == [
        {
            "type": "External",
            "external": {
                "metric": {
                    "name": "berth_stream_consumer_lag",
                    "selector": {"matchLabels": {"group": "berth-churn"}},
                },
                "target": {"type": "AverageValue", "averageValue": "500"},
            },
        }
    ]
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # the metric and its label are the ones the consumer really exports
    assert stream_metrics.LAG._name == "berth_stream_consumer_lag"
    assert "group" in stream_metrics.LAG._labelnames
    header = (built.out / "kubernetes/base/stream-hpa.yaml").read_text()
    assert "prometheus-adapter-values.yaml" in header
    assert "Kafka" not in header  # the cap note is for partitioned sources only


def test_the_consumer_is_scraped_and_reachable_on_its_metrics_port_only(built: Built) -> None:
    service = built.doc("kubernetes/base/stream-service.yaml")
    monitor = built.doc("kubernetes/base/stream-servicemonitor.yaml")
    deployment = built.doc("kubernetes/base/stream-deployment.yaml")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    policy = built.doc("kubernetes/base/stream-networkpolicy.yaml")["spec"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    ports = {p["port"] for p in policy["egress"][1]["ports"]}
    assert {6380, 4222, 5432, 443} <= ports  # the URLs' brokers, the registry, the store


def test_the_prometheus_rule_alerts_at_the_lag_the_autoscaler_cannot_shed(
    built: Built,
) -> None:
    rule = built.doc("kubernetes/base/prometheusrule.yaml")
    validate(rule)
    expected = build_rules(AlertOptions(job="berth-churn", stream_lag=500 * 6))
    assert rule["spec"]["groups"] == expected["groups"]
    lag = next(
        r
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "StreamConsumerLagHigh"
    )
    assert lag["expr"].endswith("> 3000")


@pytest.mark.parametrize(("overlay", "bounds"), [("staging", (1, 2)), ("production", (2, 6))])
def test_overlays_scale_the_consumer_too(
    built: Built, overlay: str, bounds: tuple[int, int]
) -> None:
    objects = kustomize.render(built.out / "kubernetes" / "overlays" / overlay)
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for obj in objects:
        validate(obj)
    hpa = by_key[("HorizontalPodAutoscaler", "berth-churn-stream")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == bounds
    deployment = by_key[("Deployment", "berth-churn-stream")]
    assert deployment["metadata"]["namespace"] == f"berth-{overlay}"
    (container,) = pod_specs(deployment)[0]["containers"]
    assert container["image"] == "berth-churn:1"


def test_the_offline_renderer_matches_kubectl_kustomize_with_a_consumer(built: Built) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        require_service("kubectl", "not on PATH; it renders kustomizations (`kubectl kustomize`)")
    assert kubectl is not None
    folder = built.out / "kubernetes" / "overlays" / "production"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert {key(d): d for d in yaml.safe_load_all(rendered.stdout) if d} == {
        key(d): d for d in kustomize.render(folder)
    }


# the adapter rule ----------------------------------------------------------------------------


def test_the_adapter_values_expose_the_lag_as_an_external_metric(built: Built) -> None:
    values = built.doc("kubernetes/prometheus-adapter-values.yaml")
    (rule,) = values["rules"]["external"]
    assert rule["seriesQuery"] == 'berth_stream_consumer_lag{namespace!="",group!=""}'
    assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}}}
    assert rule["name"]["as"] == "berth_stream_consumer_lag"
    assert rule["metricsQuery"] == ADAPTER_QUERY
    listed = built.doc("kubernetes/base/kustomization.yaml")["resources"]
    assert "prometheus-adapter-values.yaml" not in listed  # Helm values, never applied


def test_the_adapter_query_gives_the_groups_lag_not_the_replicas_sum(
    tmp_path: Path,
) -> None:
    """As the adapter runs it for the autoscaler's request (namespace and selector substituted):
    three replicas reporting a lag of 3000 give 3000, so ceil(3000 / 500) = 6 replicas."""
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "not on PATH; `apt-get install prometheus` provides it")
    assert promtool is not None
    query = ADAPTER_QUERY.replace("<<.Series>>", "berth_stream_consumer_lag").replace(
        "<<.LabelMatchers>>", 'namespace="berth-production",group="berth-churn"'
    )
    pods = [
        {
            "series": f'berth_stream_consumer_lag{{namespace="berth-production", '
            f'group="berth-churn", source="events", pod="berth-churn-stream-{p}"}}',
            "values": "3000x5",
        }
        for p in ("a", "b", "c")
    ]
    other = {
        "series": 'berth_stream_consumer_lag{namespace="berth-staging", group="berth-churn", '
        'source="events", pod="berth-churn-stream-z"}',
        "values": "90000x5",
    }
    (tmp_path / "empty.yml").write_text("groups: []\n")
    (tmp_path / "adapter_test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["empty.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [*pods, other],
                        "promql_expr_test": [
                            {
                                "expr": query,
                                "eval_time": "2m",
                                "exp_samples": [
                                    {
                                        "labels": '{namespace="berth-production", '
                                        'group="berth-churn"}',
                                        "value": 3000,
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    done = subprocess.run(
        [promtool, "test", "rules", "adapter_test.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# compose -----------------------------------------------------------------------------------


def test_compose_runs_the_consumer_after_the_server_and_prometheus_scrapes_it(
    built: Built,
) -> None:
    compose = built.doc("compose.yaml")
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(compose)]
    assert not errors
    services = compose["services"]
    stream, server = services["berth-stream"], services["berth"]
    assert stream["image"] == server["image"]
    assert stream["env_file"] == server["env_file"] == [".env"]
    assert stream["environment"] == server["environment"]
    assert stream["depends_on"] == {"berth": {"condition": "service_healthy"}}
    assert "berth-stream" not in services["prometheus"]["depends_on"]
    assert "ports" not in stream  # nothing outside the compose network reads it
    assert (stream["read_only"], stream["cap_drop"]) == (True, ["ALL"])
    # the password comes from .env (compose's own ${...}); Kubernetes' $(...) means nothing here
    assert stream["command"][:5] == ["berth", "stream", "run", "--bundle", "/opt/berth/model"]
    source = stream["command"][stream["command"].index("--source") + 1]
    assert source == "redis://:${BERTH_STREAM_SECRET_1}@redis.internal:6380/0?stream=events"
    example = (built.out / ".env.example").read_text()
    assert "BERTH_STREAM_SECRET_1=REPLACE-" in example
    config = yaml.safe_load((built.out / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["berth-stream"]["dns_sd_configs"] == [
        {"names": ["berth-stream"], "type": "A", "port": 9464}
    ]
    rules = yaml.safe_load((built.out / "prometheus" / "berth-rules.yml").read_text())
    assert rules == build_rules(AlertOptions(job="berth", stream_lag=3000))
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "not on PATH; `apt-get install prometheus` provides it")
    assert promtool is not None
    checked = subprocess.run(
        [promtool, "check", "config", str(built.out / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_literal_dollar_in_a_url_stays_literal_for_both_targets(
    registry: Registry, tmp_path: Path
) -> None:
    """Passwords become variables; any other `$` reaches the consumer as written (Kubernetes
    expands `$(`, which `$$(` escapes; compose expands every `$`, which `$$` escapes)."""
    options = BuildOptions(
        targets=("kubernetes", "compose"),
        stream=consumer(source="redis://:pa$(x)ss@r:6379/0?stream=in$(a)$b&token=t$k"),
    )
    result = build(RegistrySource(registry), "churn", tmp_path / "b", options)
    deployment = yaml.safe_load((result.out / "kubernetes/base/stream-deployment.yaml").read_text())
    command = pod_specs(deployment)[0]["containers"][0]["command"]
    source = command[command.index("--source") + 1]
    assert source == (
        "redis://:$(BERTH_STREAM_SECRET_1)@r:6379/0?stream=in$$(a)$b&token=$(BERTH_STREAM_SECRET_2)"
    )
    secret = yaml.safe_load((result.out / "kubernetes/base/secret.example.yaml").read_text())
    assert {"BERTH_STREAM_SECRET_1", "BERTH_STREAM_SECRET_2"} <= set(secret["stringData"])
    compose = yaml.safe_load((result.out / "compose.yaml").read_text())
    command = compose["services"]["berth-stream"]["command"]
    assert command[command.index("--source") + 1] == (
        "redis://:${BERTH_STREAM_SECRET_1}@r:6379/0?stream=in$$(a)$$b&token=${BERTH_STREAM_SECRET_2}"
    )
    batch = command[command.index("--batch-size") + 1]
    assert batch == "64"


# the command, run ---------------------------------------------------------------------------


def test_the_generated_command_scores_events_with_the_baked_model(
    built: Built, settings: Settings, tmp_path: Path
) -> None:
    """The Deployment's own command, pointed at the running Redis and a new, empty registry:
    the consumer installs the baked bundle, answers its probe path and scores every event."""
    client = redis.Redis.from_url(f"{REDIS}/0", socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        require_service("Redis", str(exc))
    name = f"berth-test-{uuid.uuid4().hex[:10]}"
    deployment = built.doc("kubernetes/base/stream-deployment.yaml")
    command = list(pod_specs(deployment)[0]["containers"][0]["command"])
    port = free_port()
    for flag, value in (
        ("--bundle", str(built.out / "model")),
        ("--source", f"{REDIS}/0?stream={name}"),
        ("--sink", f"{REDIS}/0?stream={name}.out"),
        ("--metrics-host", "127.0.0.1"),
        ("--metrics-port", str(port)),
    ):
        command[command.index(flag) + 1] = value
    events = customers(40)
    try:
        for event in events:
            client.xadd(name, {"data": json.dumps(event)})
        consumer = start_consumer(consumer_env(settings), tmp_path / "consumer.log", *command[3:])
        try:
            consumer.wait_consuming()
            assert "# TYPE berth_stream_consumer_lag gauge" in scraper(port)()  # the probes' path
            outputs = wait_for(
                lambda: (
                    [json.loads(e[b"data"]) for _, e in client.xrange(f"{name}.out")]
                    if client.xlen(f"{name}.out") >= len(events)
                    else None
                ),
                "every output",
            )
        finally:
            assert consumer.stop() == 0, consumer.text()  # SIGTERM: drained, exit 0
        assert sorted(o["id"] for o in outputs) == sorted(e["id"] for e in events)
        assert {(o["model"], o["version"]) for o in outputs} == {("churn", 1)}
        assert "registered bundle" in consumer.text()
    finally:
        kill_leftovers()
        client.delete(name, f"{name}.out", f"{name}.dead")
        client.close()


def test_stream_run_takes_a_model_or_a_bundle(settings: Settings, tmp_path: Path) -> None:
    env = consumer_env(settings)
    source, sink = "redis://127.0.0.1:1/0?stream=a", "redis://127.0.0.1:1/0?stream=b"
    for args, message in [
        (["--source", source, "--sink", sink], "MODEL or --bundle DIR"),
        (["churn", "--bundle", str(tmp_path), "--source", source, "--sink", sink],
         "MODEL or --bundle DIR"),
        (["churn", "--trust-pickle", "--source", source, "--sink", sink],
         "--trust-pickle goes with --bundle"),
        (["--bundle", str(tmp_path / "none"), "--source", source, "--sink", sink],
         "berth-bundle.json"),
    ]:  # fmt: skip
        done = run_consumer(env, *args)
        assert done.returncode == 1, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (args, done.stderr)
        assert message in lines[0], (args, done.stderr)


# options and the command -------------------------------------------------------------------


def test_a_registry_bundle_consumer_follows_the_reference_and_a_dead_letter_url(
    registry: Registry, tmp_path: Path
) -> None:
    options = BuildOptions(
        targets=("kubernetes",),
        model_source="registry",
        stream=consumer(dead_letter="redis://redis.internal:6380/0?stream=failed", group="scorers"),
    )
    result = build(RegistrySource(registry), "churn@production", tmp_path / "b", options)
    deployment = yaml.safe_load((result.out / "kubernetes/base/stream-deployment.yaml").read_text())
    command = pod_specs(deployment)[0]["containers"][0]["command"]
    assert command[3] == "churn@production"  # an alias is followed as it moves, as the server
    assert "--bundle" not in command
    assert command[command.index("--dead-letter") + 1] == (
        "redis://redis.internal:6380/0?stream=failed"
    )
    assert command[command.index("--group") + 1] == "scorers"
    hpa = yaml.safe_load((result.out / "kubernetes/base/stream-hpa.yaml").read_text())
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["selector"] == {
        "matchLabels": {"group": "scorers"}
    }


@pytest.mark.skipif("kafka" not in SCHEMES, reason="the Kafka transport is not in this tree yet")
def test_a_kafka_consumer_notes_the_partition_cap(registry: Registry, tmp_path: Path) -> None:
    options = BuildOptions(
        targets=("kubernetes",),
        stream=consumer(source="kafka://kafka.internal:9092/events",
                        sink="kafka://kafka.internal:9092/predictions"),
    )  # fmt: skip
    result = build(RegistrySource(registry), "churn@production", tmp_path / "b", options)
    header = (result.out / "kubernetes/base/stream-hpa.yaml").read_text()
    assert "partition" in header
    policy = yaml.safe_load((result.out / "kubernetes/base/stream-networkpolicy.yaml").read_text())
    assert 9092 in {p["port"] for p in policy["spec"]["egress"][1]["ports"]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source": "http://example.com/events"}, "--stream-source: "),
        ({"sink": "redis:///0?stream=out"}, "--stream-sink: "),
        ({"sink": SOURCE}, "must differ from --stream-source"),
        ({"dead_letter": SINK}, "must differ from --stream-sink"),
        ({"min_replicas": 5, "max_replicas": 3}, "--stream-min-replicas (5)"),
        ({"target_lag": 0}, "--stream-target-lag"),
        ({"batch_size": 0}, "--stream-batch-size"),
        ({"alert_lag": 0}, "--stream-alert-lag"),
    ],
)
def test_bad_consumer_options_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=__import__("re").escape(message)):
        consumer(**changes)


def test_an_endpoint_or_a_kuberay_only_build_gets_no_consumer(
    registry: Registry, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="is an endpoint"):
        build(
            RegistrySource(registry),
            "checkout",
            tmp_path / "e",
            BuildOptions(targets=("kubernetes",), stream=consumer()),
        )
    with pytest.raises(InvalidInput, match="--target kubernetes"):
        BuildOptions(targets=("kuberay",), stream=consumer())
    with pytest.raises(InvalidInput, match="label value"):
        build(
            RegistrySource(registry),
            "churn",
            tmp_path / "g",
            BuildOptions(targets=("kubernetes",), stream=consumer(group="scorers/eu")),
        )
    assert not (tmp_path / "e").exists()
    assert not (tmp_path / "g").exists()


@pytest.fixture
def cli(run_both: Run, settings: Settings, churn_files: tuple[Path, Path, Path]) -> Run:
    registry = Registry.from_settings(settings)
    register_churn(registry, churn_files)
    registry.db.dispose()
    return run_both


def test_build_command_writes_the_consumer_and_checks_its_options(cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    done = cli("build", "churn@production", "--out", str(out), "--target", "kubernetes",
               "--stream-source", "nats://nats.internal:4222/events",
               "--stream-sink", "nats://nats.internal:4222/scores",
               "--stream-max-replicas", "8", "--stream-target-lag", "200")  # fmt: skip
    assert done.code == 0, done.err
    assert "kubernetes/base/stream-hpa.yaml" in done.out
    assert "kubernetes/prometheus-adapter-values.yaml" in done.out
    hpa = yaml.safe_load((out / "kubernetes/base/stream-hpa.yaml").read_text())["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 8)
    assert hpa["metrics"][0]["external"]["target"]["averageValue"] == "200"
    readme = (out / "README.md").read_text()
    assert "## Stream consumer" in readme
    for args, message in [
        (["--stream-sink", SINK], "--stream-sink needs --stream-source"),
        (["--stream-source", "nats://n:4222/a"], "needs --stream-sink"),
        (["--stream-source", "ftp://n/a", "--stream-sink", SINK], "unknown stream scheme"),
        (["--stream-source", "nats://n:4222/a", "--stream-sink", SINK, "--target", "kuberay"],
         "--target kubernetes"),
    ]:  # fmt: skip
        refused = cli("build", "churn", "--out", str(tmp_path / "x"), *args)
        assert refused.code != 0, args
        assert message in refused.err, (args, refused.err)
        assert "Traceback" not in refused.err
    assert not (tmp_path / "x").exists()
