"""compose.yaml: Berth with PostgreSQL (the registry), Redis (shared limits) and Prometheus.

Prometheus gets Berth's own scrape config and alert rules (berth.observability), written into
the bundle's prometheus/ folder and mounted read-only. Secrets live in `.env`, which compose
reads through `env_file` and the bundle only has as `.env.example` with placeholders: nothing
secret is written into compose.yaml. Ports are published on 127.0.0.1 only; put a proxy with
TLS in front to expose the server.
"""

from __future__ import annotations

import re
from typing import Any

from berth.deploy import stream_consumer
from berth.deploy.cronjobs import ScheduleSecrets
from berth.deploy.dockerfile import healthcheck_command
from berth.deploy.plan import HOME, Plan
from berth.deploy.stream_options import METRICS_PORT
from berth.observability.alerts import AlertOptions, build_rules
from berth.observability.prometheus_config import ScrapeOptions, build_config

POSTGRES_IMAGE = "postgres:16.4-bookworm"
REDIS_IMAGE = "redis:7.4.1-bookworm"
PROMETHEUS_IMAGE = "prom/prometheus:v2.55.1"
SERVICE = "berth"
STREAM_SERVICE = "berth-stream"
"""The stream consumer's service and scrape job, when the bundle has one."""
"""The compose service name, which is also its host name and Prometheus' job name."""
RULES_FILE = "berth-rules.yml"
CONFIG_FILE = "prometheus.yml"
ENV_FILE = ".env"


def prometheus_config(plan: Plan) -> dict[str, Any]:
    config = build_config(
        ScrapeOptions(
            targets=(f"{SERVICE}:{plan.port}",),
            job=SERVICE,
            rule_files=(RULES_FILE,),  # relative to prometheus.yml, mounted beside it
        )
    )
    if plan.options.stream is not None:
        # DNS finds every replica of a scaled service (`--scale berth-stream=N`).
        config["scrape_configs"].append(
            {
                "job_name": STREAM_SERVICE,
                "metrics_path": "/metrics",
                "scheme": "http",
                "dns_sd_configs": [{"names": [STREAM_SERVICE], "type": "A", "port": METRICS_PORT}],
            }
        )
    return config


def alert_rules(plan: Plan | None = None) -> dict[str, Any]:
    options = AlertOptions(job=SERVICE)
    if plan is not None and plan.options.stream is not None:
        options = AlertOptions(job=SERVICE, stream_lag=plan.options.stream.lag_alert_threshold)
    return build_rules(options)


def build_compose(plan: Plan, secrets: ScheduleSecrets | None = None) -> dict[str, Any]:
    """`secrets` collects the broker passwords lifted out of the consumer's command."""
    services = {
        SERVICE: _berth(plan),
        "postgres": _postgres(),
        "redis": _redis(),
        "prometheus": _prometheus(plan),
    }
    if plan.options.stream is not None:
        # Prometheus does not wait for it: a consumer that cannot reach its broker is what
        # the stream alerts are there to report.
        services[STREAM_SERVICE] = _stream(plan, secrets or ScheduleSecrets())
    return {
        "services": services,
        "volumes": {"berth-data": {}, "postgres-data": {}, "prometheus-data": {}},
    }


_KUBERNETES_VARIABLE = re.compile(r"\$\$\(|\$\((BERTH_STREAM_SECRET_[0-9]+)\)|\$")


def _compose_syntax(arg: str) -> str:
    """An argument lifted for Kubernetes (`$(VAR)`, `$$(` for a literal) in compose's syntax:
    `${VAR}` from .env, and `$$` for every literal dollar."""

    def one(found: re.Match[str]) -> str:
        if found[1]:
            return "${" + found[1] + "}"
        return "$$(" if found[0] == "$$(" else "$$"

    return _KUBERNETES_VARIABLE.sub(one, arg)


def _stream(plan: Plan, secrets: ScheduleSecrets) -> dict[str, Any]:
    run, _variables = stream_consumer.command(plan, secrets)
    script = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=4)"
    )
    return {
        "image": plan.image,
        "restart": "unless-stopped",
        "command": [_compose_syntax(arg) for arg in run],
        "env_file": [ENV_FILE],
        "environment": plan.settings(),
        "read_only": True,
        "tmpfs": ["/tmp", HOME],  # noqa: S108 - the container's own scratch space
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        # The drain after SIGTERM: finish and acknowledge the batch in flight.
        "stop_grace_period": f"{stream_consumer.DRAIN_SECONDS}s",
        "healthcheck": {
            "test": ["CMD", "python", "-c", script],
            "interval": "10s",
            "timeout": "5s",
            "retries": 5,
            "start_period": "120s",
        },
        # With a baked model the server registers it first; the consumer then finds it.
        "depends_on": {SERVICE: {"condition": "service_healthy"}},
    }


def _berth(plan: Plan) -> dict[str, Any]:
    return {
        "build": {"context": ".", "dockerfile": "Dockerfile"},
        "image": plan.image,
        "restart": "unless-stopped",
        # BERTH_SECRET_KEY, BERTH_DATABASE_URL (with the PostgreSQL password), BERTH_REDIS_URL
        "env_file": [ENV_FILE],
        "environment": plan.settings(),
        "ports": [f"127.0.0.1:{port}:{port}" for port in plan.ports],
        "volumes": [f"berth-data:{HOME}"],
        "read_only": True,
        "tmpfs": ["/tmp"],  # noqa: S108 - the container's own scratch space
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "healthcheck": {
            "test": ["CMD", *healthcheck_command(plan.port)],
            "interval": "10s",
            "timeout": "5s",
            "retries": 5,
            "start_period": "120s",
        },
        "depends_on": {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        },
    }


def _postgres() -> dict[str, Any]:
    return {
        "image": POSTGRES_IMAGE,
        "restart": "unless-stopped",
        "env_file": [ENV_FILE],  # POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB
        "volumes": ["postgres-data:/var/lib/postgresql/data"],
        "healthcheck": {
            # $$ reaches the container as $: the variables are the container's, from .env.
            "test": ["CMD-SHELL", 'pg_isready -U "$${POSTGRES_USER}" -d "$${POSTGRES_DB}"'],
            "interval": "5s",
            "timeout": "5s",
            "retries": 10,
        },
    }


def _redis() -> dict[str, Any]:
    return {
        "image": REDIS_IMAGE,
        "restart": "unless-stopped",
        "command": ["redis-server", "--save", "", "--appendonly", "no"],
        "healthcheck": {
            "test": ["CMD", "redis-cli", "ping"],
            "interval": "5s",
            "timeout": "3s",
            "retries": 10,
        },
    }


def _prometheus(plan: Plan) -> dict[str, Any]:
    return {
        "image": PROMETHEUS_IMAGE,
        "restart": "unless-stopped",
        "command": [
            f"--config.file=/etc/prometheus/{CONFIG_FILE}",
            "--storage.tsdb.path=/prometheus",
        ],
        "volumes": [
            f"./prometheus/{CONFIG_FILE}:/etc/prometheus/{CONFIG_FILE}:ro",
            f"./prometheus/{RULES_FILE}:/etc/prometheus/{RULES_FILE}:ro",
            "prometheus-data:/prometheus",
        ],
        "ports": ["127.0.0.1:9090:9090"],
        "healthcheck": {
            "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/ready"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 5,
        },
        "depends_on": {SERVICE: {"condition": "service_healthy"}},
    }


def render_env_example(stream_secrets: list[str] | None = None) -> str:
    """The secrets compose reads from .env, as placeholders to replace (never real values)."""
    lifted = "".join(
        f"{name}=REPLACE-with-the-password-removed-from-the-stream-url\n"
        for name in stream_secrets or []
    )
    header = "# The stream consumer's broker passwords, lifted out of its URLs.\n" if lifted else ""
    return _ENV_EXAMPLE + header + lifted


_ENV_EXAMPLE = """\
# Copy to .env and replace every REPLACE value before `docker compose up`; never commit .env.
# BERTH_SECRET_KEY keys the hashes of API keys: `openssl rand -hex 32` makes a good one.
BERTH_SECRET_KEY=REPLACE-with-output-of-openssl-rand-hex-32
# The registry: the password here must be POSTGRES_PASSWORD below.
BERTH_DATABASE_URL=postgresql+psycopg://berth:REPLACE-password@postgres:5432/berth
BERTH_REDIS_URL=redis://redis:6379/0
POSTGRES_USER=berth
POSTGRES_PASSWORD=REPLACE-password
POSTGRES_DB=berth
"""
