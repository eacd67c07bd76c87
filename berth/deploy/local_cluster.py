"""Several `berth serve` replicas behind nginx on one machine.

`LocalCluster` starts N replicas (subprocesses on free ports) sharing one registry database,
one artifact store, one Redis (rate limits, prediction cache) and one server secret, puts nginx
in front of them (`berth.deploy.nginx`) and stops everything on exit. It is what a deployment
on several machines looks like, shrunk to one: replicas share nothing but those services, and
each converges on registry changes within BERTH_REFRESH_SECONDS.

`kill_under_load` measures what clients see when one replica dies mid-load; the demo
(`berth.deploy.cluster_demo`, `make cluster-demo`) runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from berth.deploy.nginx import (
    Nginx,
    ProxyConfig,
    Replica,
    parse_access_log,
    worker_user,
)
from berth.errors import InvalidInput, NotReady
from berth.ops.http1 import HttpRequest
from berth.ops.loadtest import Load, LoadTest, run_async

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PREDICT_PATH = "/api/v1/models/churn/predict"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (never 8000 or 8080, which people use for other things)."""
    while True:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in (8000, 8080):
            return port


# the services the replicas share ------------------------------------------------------------


def _shown(url: str) -> str:
    """The URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.rpartition("@")[2]


def require_services(database_url: str, redis_url: str) -> None:
    """PostgreSQL and Redis answer; otherwise an error naming the one missing and how to fix it."""
    if database_url.startswith("sqlite"):
        raise InvalidInput(
            "replicas must share one registry, and SQLite is one process's file; point "
            "BERTH_DATABASE_URL at PostgreSQL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        )
    _require_postgresql(database_url)
    _require_redis(redis_url)


def _require_postgresql(url: str) -> None:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        raise NotReady(
            f"PostgreSQL at {_shown(url)} is not reachable ({_reason(exc)}); start it (`sudo service "
            "postgresql start`, or `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust "
            "postgres:16`) or set BERTH_DATABASE_URL"
        ) from exc


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's first line, without SQLAlchemy's wrapping and links."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _require_redis(url: str) -> None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    except ValueError as exc:
        raise InvalidInput(
            f"{_shown(url)} is not a Redis URL ({exc}); set BERTH_REDIS_URL"
        ) from exc
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise NotReady(
            f"Redis at {_shown(url)} is not reachable ({exc}); start it (`sudo service "
            "redis-server start`, or `docker run -d -p 6379:6379 redis:7`) or set BERTH_REDIS_URL"
        ) from exc
    finally:
        client.close()


@contextlib.contextmanager
def isolated_schema(database_url: str, prefix: str = "berth_cluster") -> Iterator[str]:
    """A URL whose tables live in a new PostgreSQL schema, dropped afterwards.

    A URL that already sets `options=` (say a search_path) is used as it is.
    """
    if "options=" in database_url:
        yield database_url
        return
    schema = f"{prefix}_{secrets.token_hex(6)}"
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except SQLAlchemyError as exc:
        engine.dispose()
        raise InvalidInput(
            f"could not create the schema {schema} in {_shown(database_url)} ({_reason(exc)}); "
            "grant the user CREATE on the database, or pass a URL that picks a schema itself "
            "(...?options=-csearch_path%3Dmy_schema)"
        ) from exc
    separator = "&" if "?" in database_url else "?"
    try:
        yield f"{database_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


# the cluster --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterConfig:
    """What every replica shares, and how many there are."""

    database_url: str
    """The registry (PostgreSQL): models, aliases, keys, endpoints, rollouts, prediction log."""
    redis_url: str
    """Rate-limit buckets and the prediction cache."""
    artifact_url: str
    """The artifact store every replica loads versions from."""
    secret_key: str
    """BERTH_SECRET_KEY: API keys are hashed with it, so every replica must have the same."""
    workdir: Path
    """Replica homes and logs, and nginx's config, temp files and logs."""
    replicas: int = 3
    served: tuple[str, ...] = ()
    """References each replica serves; empty: every model with a production alias."""
    settings: Mapping[str, str] = field(default_factory=dict)
    """More BERTH_* variables for every replica, e.g. {"BERTH_MODELS": '{"churn": ...}'}."""
    environment: Mapping[str, str] | None = None
    """The environment replicas start from; default this process's."""
    max_body_bytes: int = 16 * 1024 * 1024
    """BERTH_MAX_BODY_BYTES of the replicas, and nginx's client_max_body_size."""
    request_timeout_seconds: float = 30.0
    """BERTH_REQUEST_TIMEOUT_SECONDS of the replicas; nginx waits a little longer."""
    max_upload_bytes: int = 2 * 1024**3
    """BERTH_MAX_UPLOAD_BYTES of the replicas, and nginx's limit on the upload route."""
    upload_timeout_seconds: float = 900.0
    """BERTH_UPLOAD_TIMEOUT_SECONDS of the replicas; nginx waits a little longer."""
    host: str = "127.0.0.1"
    ready_seconds: float = 120.0
    """How long replicas may take to load their models before start() gives up."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InvalidInput("a cluster needs at least one replica")

    def replica_environment(self, index: int) -> dict[str, str]:
        env = dict(os.environ if self.environment is None else self.environment)
        env.update(
            BERTH_HOME=str(self.workdir / f"replica-{index}"),
            BERTH_DATABASE_URL=self.database_url,
            BERTH_ARTIFACT_URL=self.artifact_url,
            BERTH_REDIS_URL=self.redis_url,
            BERTH_CACHE_BACKEND="redis",
            BERTH_SECRET_KEY=self.secret_key,
            BERTH_MAX_BODY_BYTES=str(self.max_body_bytes),
            BERTH_REQUEST_TIMEOUT_SECONDS=str(self.request_timeout_seconds),
            BERTH_MAX_UPLOAD_BYTES=str(self.max_upload_bytes),
            BERTH_UPLOAD_TIMEOUT_SECONDS=str(self.upload_timeout_seconds),
            # nginx is the only proxy; its X-Forwarded-For is the client address.
            BERTH_TRUSTED_PROXIES=json.dumps([self.host]),
        )
        env.update(self.settings)
        return env


@dataclass
class ReplicaProcess:
    index: int
    host: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


class LocalCluster:
    """N `berth serve` replicas and nginx; a context manager that starts and stops them all."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        config.workdir.mkdir(parents=True, exist_ok=True)
        self.replicas = [
            ReplicaProcess(
                i, config.host, free_port(config.host), config.workdir / f"replica-{i}.log"
            )
            for i in range(config.replicas)
        ]
        proxy = ProxyConfig(
            replicas=tuple(Replica(config.host, r.port) for r in self.replicas),
            port=free_port(config.host),
            state_dir=config.workdir / "nginx",
            host=config.host,
            max_body_bytes=config.max_body_bytes,
            request_timeout_seconds=config.request_timeout_seconds,
            max_upload_bytes=config.max_upload_bytes,
            upload_timeout_seconds=config.upload_timeout_seconds,
            user=worker_user(),
        )
        self.nginx = Nginx(proxy)

    @property
    def url(self) -> str:
        """Where clients go: nginx."""
        return self.nginx.config.url

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every replica and nginx; return once each replica answers /ready."""
        require_services(self.config.database_url, self.config.redis_url)
        try:
            for replica in self.replicas:
                self._spawn(replica)
            self.nginx.start()
            for replica in self.replicas:
                self._wait_ready(replica, time.monotonic() + self.config.ready_seconds)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, replica: ReplicaProcess) -> None:
        command = [sys.executable, "-m", "berth.cli", "serve"]
        command += ["--host", self.config.host, "--port", str(replica.port), *self.config.served]
        with replica.log.open("ab") as log:
            replica.process = subprocess.Popen(
                command,
                env=self.config.replica_environment(replica.index),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self, replica: ReplicaProcess, deadline: float) -> None:
        assert replica.process is not None
        while time.monotonic() < deadline:
            if replica.process.poll() is not None:
                raise NotReady(
                    f"replica {replica.index} exited with {replica.process.returncode} while "
                    f"starting; its log ({replica.log}) ends with:\n{replica.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{replica.url}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise NotReady(
            f"replica {replica.index} was not ready within {self.config.ready_seconds:g} s; "
            f"see its log {replica.log}"
        )

    def kill(self, index: int) -> None:
        """SIGKILL one replica: no graceful shutdown, connections in flight just break."""
        process = self.replicas[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def revive(self) -> list[int]:
        """Restart every replica that has exited (killed, crashed); the indexes restarted."""
        dead = [r for r in self.replicas if r.process is None or r.process.poll() is not None]
        for replica in dead:
            self._spawn(replica)
        deadline = time.monotonic() + self.config.ready_seconds
        for replica in dead:
            self._wait_ready(replica, deadline)
        return [r.index for r in dead]

    def stop(self, timeout: float = 15.0) -> None:
        """Stop nginx, then the replicas (SIGTERM, SIGKILL after `timeout`)."""
        self.nginx.stop()
        running = [r.process for r in self.replicas if r.process and r.process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def access_log_size(self) -> int:
        log = self.nginx.config.access_log
        return log.stat().st_size if log.exists() else 0

    def retried_since(self, offset: int) -> int:
        """Requests nginx sent to more than one replica, logged after byte `offset`."""
        log = self.nginx.config.access_log
        with log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        return sum(1 for entry in parse_access_log(text) if len(entry.upstreams) > 1)


# load with a replica killed in the middle ---------------------------------------------------


@dataclass(frozen=True)
class LoadFigures:
    """What the clients saw."""

    sent: int
    failed: int
    """Non-2xx answers and transport errors."""
    status_codes: dict[int, int]
    transport_errors: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    seconds: float
    killed_after: int
    """Requests finished when the replica was killed."""
    retried: int
    """Requests nginx had to send to another replica (from its access log)."""

    def summary(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} ms"

        return (
            f"sent {self.sent}, failed {self.failed} (replica killed after {self.killed_after}; "
            f"nginx retried {self.retried} on another replica) in {self.seconds:.2f} s; "
            f"p50 {ms(self.p50_ms)}, p99 {ms(self.p99_ms)}; statuses {self.status_codes}"
            + (f", transport errors {self.transport_errors}" if self.transport_errors else "")
        )


def kill_under_load(
    cluster: LocalCluster,
    request: HttpRequest,
    requests: int,
    victim: int,
    concurrency: int = 8,
) -> LoadFigures:
    """Send `requests` through nginx; SIGKILL replica `victim` once a third have finished."""
    offset = cluster.access_log_size()
    test = LoadTest(request, Load(concurrency=concurrency, requests=requests, timeout=30))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_async, test.run())
        while test.progress().requests < requests // 3 and not running.done():
            time.sleep(0.005)
        killed_after = test.progress().requests
        cluster.kill(victim)
        result = running.result()
    return LoadFigures(
        sent=result.requests,
        failed=result.errors,
        status_codes=dict(sorted(result.status_codes.items())),
        transport_errors=result.transport_errors,
        p50_ms=result.latency.p50,
        p99_ms=result.latency.p99,
        seconds=result.duration,
        killed_after=killed_after,
        retried=cluster.retried_since(offset),
    )
