"""`berth serve --engine ray`: deploy the server on Ray Serve and stay until stopped.

Without an address a local Ray instance is started for this process and torn down with it; with
one (`--address`, `BERTH_RAY_ADDRESS`) the application is deployed to that cluster and removed
again when the command stops, unless `--detach` leaves it running there. Replicas get the
`BERTH_*` variables of this process through their runtime environment, so they read the same
registry, keys and settings as a `berth serve` started here would.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from berth.deploy.ray_options import APPLICATION_NAME, MULTIPROCESS_ENV, ReplicaOptions
from berth.errors import InvalidInput

log = logging.getLogger("berth.serve")


@dataclass(frozen=True)
class RayServing:
    """Where and how `berth serve --engine ray` deploys."""

    served: list[str]
    """References the application serves."""
    host: str
    """Address Ray Serve's proxy listens on."""
    port: int
    """Port Ray Serve's proxy listens on."""
    replicas: ReplicaOptions
    """Replica count, autoscaling and CPUs."""
    home: Path
    """The data directory replicas use (made absolute for them: their working directory differs)."""
    database_url: str
    """The registry replicas read: on a cluster, one every node reaches."""
    artifact_url: str
    """The artifact store replicas read: on a cluster, one every node reaches."""
    address: str | None = None
    """Ray cluster to deploy to; None starts a local Ray instance."""
    detach: bool = False
    """Leave the application running on the cluster when the command stops."""

    @property
    def local(self) -> bool:
        return self.address in (None, "", "local")

    def describe(self) -> str:
        return "a local Ray instance" if self.local else f"the Ray cluster at {self.address}"


def replica_environment(home: Path, environ: dict[str, str]) -> dict[str, str]:
    """The `BERTH_*` variables replicas start with; relative paths made absolute.

    Replicas run in Ray's worker processes, whose working directory is not this one, so the
    data directory (and with it the default SQLite registry and artifact folder) is resolved.
    A variable left out of this environment is read from the one the Ray nodes were started
    with: credentials kept there stay out of the runtime environment, which Ray's dashboard
    and `serve status` show to whoever can reach the cluster.
    """
    env = {name: value for name, value in environ.items() if name.startswith("BERTH_")}
    env["BERTH_HOME"] = str(home.resolve())
    if "BERTH_CONFIG" in env:
        env["BERTH_CONFIG"] = str(Path(env["BERTH_CONFIG"]).resolve())
    elif Path("berth.toml").is_file():  # found by its relative name, which replicas would miss
        env["BERTH_CONFIG"] = str(Path("berth.toml").resolve())
    env.pop("BERTH_WORKERS", None)  # Ray's replicas take the place of worker processes
    return env


def serve_on_ray(
    serving: RayServing,
    say: Callable[[str], None],
    environ: dict[str, str] | None = None,
) -> None:
    """Deploy, report where it serves, then wait for SIGINT/SIGTERM (or return at once if detached)."""
    if serving.detach and serving.local:
        raise InvalidInput(
            "--detach needs a Ray cluster (--address or BERTH_RAY_ADDRESS): a local Ray "
            "instance stops with this command"
        )
    if not serving.local:
        _check_shared_state(serving)
    env = replica_environment(serving.home, dict(os.environ if environ is None else environ))
    with _shared_metrics(serving, env):
        options = replace(serving.replicas, env=env)
        with _ray(serving):
            from ray import serve

            # After ray.init, which installs its own SIGTERM handler (one that exits at once,
            # leaving the application deployed); a signal during the deploy is acted on after it.
            stop = _stop_on_signals()
            serving = _start_serve(serving)
            _deploy(options)
            say(
                f"Serving {', '.join(serving.served)} on http://{serving.host}:{serving.port} "
                f"with Ray Serve on {serving.describe()} ({options.min_replicas} to "
                f"{options.max_replicas} replicas, {options.target_ongoing_requests:g} requests "
                "in flight per replica targeted)"
            )
            if serving.detach:
                say(
                    f"Detached: the application {APPLICATION_NAME!r} keeps running on the "
                    f"cluster; remove it with `serve.delete({APPLICATION_NAME!r})`"
                )
                return
            stop.wait()
            say("Stopping: removing the application from Ray Serve ...")
            if serving.local:
                serve.shutdown()  # type: ignore[no-untyped-call]
            else:
                serve.delete(APPLICATION_NAME)


def _check_shared_state(serving: RayServing) -> None:
    """Replicas on other machines must reach the same registry and artifacts as this one."""
    database = serving.database_url
    artifacts = serving.artifact_url
    if database.startswith("sqlite") or "://" not in artifacts:
        # A warning, not a refusal: a one-machine cluster (or a shared mount) works.
        log.warning(
            "replicas on other machines of the Ray cluster cannot read this machine's registry "
            "(%s) or artifacts (%s); set BERTH_DATABASE_URL to a PostgreSQL server and "
            "BERTH_ARTIFACT_URL to shared storage (s3://..., gs://...) unless every node "
            "shares these paths",
            database.split("://")[0],
            artifacts,
        )


@contextmanager
def _ray(serving: RayServing) -> Iterator[None]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a server
    import ray

    try:
        ray.init(
            address=None if serving.local else serving.address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        if serving.local:
            raise InvalidInput(
                f"could not start a local Ray instance: {exc}; check `ray start --head` works "
                "here, or pass --address of a running cluster"
            ) from exc
        raise InvalidInput(
            f"could not connect to Ray at {serving.address}: {exc}; start a cluster with "
            "`ray start --head` and pass its address (host:6379, or ray://host:10001)"
        ) from exc
    try:
        yield
    finally:
        ray.shutdown()


def _start_serve(serving: RayServing) -> RayServing:
    """Start Ray Serve's proxies; the serving as it really is (the port may be the cluster's)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": serving.host, "port": serving.port})
    # Ray Serve keeps the HTTP options of its first start on a cluster and only logs that newer
    # ones are ignored; say so plainly and report the address it really listens on.
    client = _get_global_client()
    http = client.http_config if client is not None else None
    if http is not None and (http.host, http.port) != (serving.host, serving.port):
        log.warning(
            "Ray Serve on this cluster already listens on %s:%d (set when it first started), "
            "not %s:%d; run `serve shutdown` on the cluster to change it",
            http.host,
            http.port,
            serving.host,
            serving.port,
        )
        return replace(serving, host=http.host, port=http.port)
    return serving


def _deploy(options: ReplicaOptions) -> None:
    from ray import serve

    from berth.deploy.ray_serve import application

    try:
        serve.run(application(options), name=APPLICATION_NAME, route_prefix="/", blocking=False)
    except Exception as exc:  # Ray wraps a replica's failure in its own exception types
        raise InvalidInput(
            f"Ray Serve could not start the Berth replicas: {str(exc).strip()[:2000]}; the "
            "replica logs are under the Ray session's logs folder (/tmp/ray/session_latest/logs)"
        ) from exc


@contextmanager
def _shared_metrics(serving: RayServing, env: dict[str, str]) -> Iterator[None]:
    """One fresh metrics folder per deploy, which every replica on a machine writes to.

    `/metrics` through Ray's proxy reaches any replica; with the folder shared each answers with
    the sum over its machine's replicas (as `berth serve --workers N` does), so on one machine
    the counters are exact. A local folder is removed afterwards; on a cluster the nodes keep
    theirs (small files under their temp folder).
    """
    if MULTIPROCESS_ENV in env:  # the operator chose one
        yield
        return
    path = Path(tempfile.gettempdir()) / f"berth-ray-metrics-{uuid.uuid4().hex[:12]}"
    env[MULTIPROCESS_ENV] = str(path)
    try:
        yield
    finally:
        if serving.local:
            shutil.rmtree(path, ignore_errors=True)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return stop
