"""`berth serve`: run the HTTP(S) server (uvicorn) for the given references."""

from __future__ import annotations

import enum
import errno
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import typer

from berth.cli.context import console, err_console, registry, settings
from berth.defaults import DEFAULT_PORT
from berth.errors import InvalidInput
from berth.registry.references import DEFAULT_ALIAS

# uvicorn, the settings and the endpoints are imported when a server starts: every command
# imports this module to register `berth serve`.


class Engine(enum.StrEnum):
    uvicorn = "uvicorn"
    ray = "ray"


@dataclass(frozen=True)
class ServerOptions:
    served: list[str]
    host: str
    port: int
    workers: int = 1
    dev: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    follow_production: bool = False
    """`served` are today's production models; serve models given the alias later too."""
    console_read_only: bool = False
    grpc_port: int | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def environment(self) -> dict[str, str]:
        """What worker processes need; they read their settings from the environment."""
        env = {
            # No references at all: workers serve (and follow) every production alias.
            "BERTH_SERVED": "[]" if self.follow_production else json.dumps(self.served),
            "BERTH_HOST": self.host,
            "BERTH_PORT": str(self.port),
            "BERTH_WORKERS": str(self.workers),
            "BERTH_DEV": "1" if self.dev else "0",
        }
        if self.console_read_only:
            env["BERTH_CONSOLE_READ_ONLY"] = "1"
        if self.grpc_port is not None:
            env["BERTH_GRPC_PORT"] = str(self.grpc_port)
        if self.tls_cert and self.tls_key:
            env["BERTH_TLS_CERT_FILE"] = str(self.tls_cert)
            env["BERTH_TLS_KEY_FILE"] = str(self.tls_key)
        return env


def serve(
    references: list[str] = typer.Argument(
        None,
        help="NAME, NAME:VERSION or NAME@ALIAS (default: every model with a production alias).",
    ),
    host: str | None = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help=f"Port (default {DEFAULT_PORT})."),
    grpc_port: int | None = typer.Option(
        None,
        "--grpc-port",
        help="Also serve the Open Inference Protocol over gRPC on this port, in every worker "
        "(BERTH_GRPC_PORT; TLS with --tls-cert as HTTPS).",
    ),
    workers: int | None = typer.Option(None, help="Worker processes (default 1)."),
    dev: bool = typer.Option(
        False, "--dev", help="Accept requests without an API key (local development only)."
    ),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain: serve HTTPS."),
    tls_key: Path | None = typer.Option(None, help="PEM private key for --tls-cert."),
    engine: Engine = typer.Option(
        Engine.uvicorn,
        help="uvicorn: this machine's processes; ray: a Ray Serve deployment with autoscaling.",
    ),
    address: str | None = typer.Option(
        None,
        help="Ray cluster for --engine ray (host:6379, ray://host:10001, auto); default "
        "BERTH_RAY_ADDRESS, else a local Ray instance.",
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="--engine ray on a cluster: deploy, then return and leave it running.",
    ),
    bundle: Path | None = typer.Option(
        None,
        help="A model folder baked by `berth build` (with berth-bundle.json): verified by "
        "sha256, registered if new, then served.",
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="With --bundle: the baked model is a pickle you trust (the bundle's own manifest "
        "cannot vouch for itself).",
    ),
    console_read_only: bool = typer.Option(
        False,
        "--console-read-only",
        help="The browser console at /console shows everything but offers and accepts no "
        "action (BERTH_CONSOLE_READ_ONLY; BERTH_CONSOLE=false leaves it out).",
    ),
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="Start even when nothing has a production alias yet: the admin API answers (for "
        "remote `berth` and CI) and models are served as they get one.",
    ),
) -> None:
    """Serve models: Berth v1 at /api/v1, Open Inference Protocol v2 at /v2, a console at /console.

    Every endpoint in the registry is served too, and the rollout controller runs inside.

    Example: berth serve churn@production --port 9000 --grpc-port 9001 --workers 2 --tls-cert cert.pem --tls-key key.pem
    """
    current = settings()
    port = current.port if port is None else _checked("--port", port, 1, 65535)
    if grpc_port is not None:
        _checked("--grpc-port", grpc_port, 1, 65535)
    grpc_port = current.grpc_port if grpc_port is None else grpc_port
    workers = current.workers if workers is None else _checked("--workers", workers, 1, 1024)
    address = address or current.ray_address
    _check_engine(engine, address, detach, workers, tls_cert or tls_key, grpc_port)
    host = host or current.host
    if engine is Engine.uvicorn:
        # Before any model loads: a clash is one line, at once.
        check_port_free(host, port)
        if grpc_port is not None:
            if grpc_port == port:
                raise InvalidInput("--grpc-port must differ from --port (HTTP listens there)")
            check_port_free(host, grpc_port, option="--grpc-port")
    served = list(references or current.served)
    if bundle is not None:
        from berth.deploy.bundle import install_bundle

        served.append(install_bundle(registry(), bundle, trust_pickle=trust_pickle))
    options = ServerOptions(
        served=served,
        host=host,
        port=port,
        workers=workers,
        dev=dev or current.dev,
        tls_cert=tls_cert or current.tls_cert_file,
        tls_key=tls_key or current.tls_key_file,
        follow_production=not served,
        console_read_only=console_read_only or current.console_read_only,
        grpc_port=grpc_port,
    )
    check = partial(_checked_references, options, allow_empty)
    if engine is Engine.ray:
        _serve_on_ray(check(), address, detach)
        return
    start_server(options, check)


def _checked_references(options: ServerOptions, allow_empty: bool) -> ServerOptions:
    """The options with every reference resolved in the registry (a typo is one line before
    anything starts), and with today's production models when following the alias."""
    served = options.served or _production_models(allow_empty)
    for reference in served:
        registry().resolve(reference)
    return replace(options, served=served)


def _checked(option: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{option} must be between {low} and {high}, got {value}")
    return value


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    """Refuse at once when the address cannot be bound (in use, not an address of this host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInput(f"--host {host} is not an address of this machine ({exc})") from exc
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by a stopped server is free to reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except PermissionError as exc:
            raise InvalidInput(
                f"port {port} needs privileges to bind; pick a port above 1023 with {option}"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidInput(
                    f"port {port} on {host} is in use (another server?); stop it or pick "
                    f"another port with {option}"
                ) from exc
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _check_engine(
    engine: Engine,
    address: str | None,
    detach: bool,
    workers: int,
    tls: Path | None,
    grpc_port: int | None,
) -> None:
    """Refuse option mixes before anything is registered or started."""
    if engine is not Engine.ray:
        if detach or (address is not None and address != settings().ray_address):
            raise InvalidInput("--address and --detach apply to --engine ray only")
        return
    if grpc_port is not None:
        raise InvalidInput(
            "--engine ray serves HTTP through Ray Serve's proxy; drop --grpc-port (and "
            "BERTH_GRPC_PORT), or serve gRPC with the default engine"
        )
    if workers > 1 or tls is not None:
        raise InvalidInput(
            "--engine ray scales with replicas (BERTH_RAY_MIN_REPLICAS, BERTH_RAY_MAX_REPLICAS), "
            "not --workers, and Ray Serve's proxy speaks HTTP: drop --workers and the TLS "
            "options (terminate TLS at a load balancer in front of it)"
        )
    if detach and not address:
        raise InvalidInput(
            "--detach needs a Ray cluster (--address or BERTH_RAY_ADDRESS): a local Ray "
            "instance stops with this command"
        )


def _serve_on_ray(options: ServerOptions, address: str | None, detach: bool) -> None:
    from berth.config import load_settings

    try:
        from berth.deploy.ray_engine import RayServing, serve_on_ray
        from berth.deploy.ray_options import ReplicaOptions
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise InvalidInput(
            f"--engine ray needs Ray Serve ({exc}); install it with `pip install 'berth[ray]'`"
        ) from exc
    if options.dev:
        err_console.print("[bold red]DEV MODE[/]: no API key needed. Never expose this server.")
    console.print(f"Deploying {', '.join(options.served)} to Ray Serve ...")
    current = load_settings()
    serving = RayServing(
        options.served,
        options.host,
        options.port,
        replicas=ReplicaOptions.from_settings(current),
        home=current.home,
        database_url=current.resolved_database_url,
        artifact_url=current.resolved_artifact_url,
        address=address,
        detach=detach,
    )
    # Replicas get the options as variables; this process's environment stays as it was.
    environ = {**os.environ, **options.environment()}
    serve_on_ray(serving, console.print, environ=environ)


def _production_models(allow_empty: bool) -> list[str]:
    from berth.registry.endpoints import EndpointService

    names = registry().models_with_alias(DEFAULT_ALIAS)
    if not names and not allow_empty and not EndpointService(registry()).all():
        raise InvalidInput(
            "nothing to serve: pass references (`berth serve churn:3`), point a production "
            "alias at a version (`berth models alias churn production 3`), create an "
            "endpoint (`berth endpoints create churn --model churn:3`), or add --allow-empty "
            "to start a server that registers and rolls out models through its API"
        )
    return [f"{name}@{DEFAULT_ALIAS}" for name in names]


def _check_tls(options: ServerOptions) -> None:
    if (options.tls_cert is None) != (options.tls_key is None):
        raise InvalidInput("HTTPS needs both --tls-cert and --tls-key")
    for path in (options.tls_cert, options.tls_key):
        if path is not None and not path.is_file():
            raise InvalidInput(f"TLS file {path} does not exist; pass a PEM file")


def start_server(options: ServerOptions, check: Callable[[], ServerOptions] | None = None) -> None:
    """Run uvicorn with the options; worker processes read them from the environment.

    `check` resolves the references (`_checked_references`). With several workers it runs in a
    copy of this process while this one becomes the supervisor and imports the server: the
    registry's import and queries (0.4 s) leave the path to the first prediction, and the
    supervisor starts no worker until the copy has said yes (`berth.cli.supervisor`)."""
    from berth.cli import supervisor
    from berth.cli.entry import hold_ctrl_c
    from berth.config import load_settings

    _check_tls(options)
    os.environ.update(options.environment())
    if options.workers <= 1:
        _announce(check() if check is not None else options)
        supervisor.run(load_settings())  # read again: the options are in the environment now
        return
    # Several workers: become the lean supervisor (same pid, so signals and wait() still reach
    # the server), and leave the CLI's imports behind.
    sys.stdout.flush()
    sys.stderr.flush()
    if check is not None:
        checker = os.fork()
        if checker == 0:
            # An error propagates to the CLI's handler: one line, exit status 1.
            _announce(check())
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        os.environ[supervisor.CHECKER_ENV] = str(checker)
    else:
        _announce(options)
    hold_ctrl_c()  # until the supervisor's handler is in; a Ctrl-C meanwhile then exits 130
    os.execv(sys.executable, [sys.executable, "-m", "berth.cli.supervisor"])  # noqa: S606


def _announce(options: ServerOptions) -> None:
    if options.dev:
        err_console.print("[bold red]DEV MODE[/]: no API key needed. Never expose this server.")
    later = " (and models given a production alias later)" if options.follow_production else ""
    grpc = f" and gRPC on {options.host}:{options.grpc_port}" if options.grpc_port else ""
    console.print(
        f"Serving {', '.join(options.served) or 'endpoints'}{later} on "
        f"{options.scheme}://{options.host}:{options.port}{grpc} ({options.workers} worker(s))"
    )
