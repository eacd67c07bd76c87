"""`berth serve`: run the HTTP server (uvicorn) for the given references."""

from __future__ import annotations

import json
import logging
import os

import typer
import uvicorn

from berth.cli.context import console, err_console, registry, settings
from berth.config import DEFAULT_PORT
from berth.errors import InvalidInput
from berth.registry.references import DEFAULT_ALIAS

_ENV = {
    "served": "BERTH_SERVED",
    "dev": "BERTH_DEV",
    "host": "BERTH_HOST",
    "port": "BERTH_PORT",
    "workers": "BERTH_WORKERS",
}


def serve(
    references: list[str] = typer.Argument(
        None,
        help="NAME, NAME:VERSION or NAME@ALIAS (default: every model with a production alias).",
    ),
    host: str | None = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help=f"Port (default {DEFAULT_PORT})."),
    workers: int | None = typer.Option(None, help="Worker processes (default 1)."),
    dev: bool = typer.Option(
        False, "--dev", help="Accept requests without an API key (local development only)."
    ),
) -> None:
    """Serve models over HTTP: Berth v1 at /api/v1, Open Inference Protocol v2 at /v2.

    Example: berth serve churn@production --port 9000 --workers 2
    """
    current = settings()
    served = list(references or []) or _production_models()
    for reference in served:
        registry().resolve(reference)
    start_server(
        served,
        host or current.host,
        port or current.port,
        workers or current.workers,
        dev or current.dev,
    )


def start_server(served: list[str], host: str, port: int, workers: int, dev: bool) -> None:
    """Run uvicorn; worker processes read their settings from the environment set here."""
    overrides = {
        "served": json.dumps(served),
        "host": host,
        "port": str(port),
        "workers": str(workers),
        "dev": "1" if dev else "0",
    }
    for key, value in overrides.items():
        os.environ[_ENV[key]] = value
    if dev:
        err_console.print("[bold red]DEV MODE[/]: no API key needed. Never expose this server.")
    console.print(f"Serving {', '.join(served)} on http://{host}:{port} ({workers} worker(s))")
    run_server(host, port, workers, settings().log_level)


def _production_models() -> list[str]:
    names = registry().models_with_alias(DEFAULT_ALIAS)
    if not names:
        raise InvalidInput(
            "nothing to serve: pass references (`berth serve churn:3`) or point a production "
            "alias at a version (`berth models alias churn production 3`)"
        )
    return [f"{name}@{DEFAULT_ALIAS}" for name in names]


def run_server(host: str, port: int, workers: int, log_level: str) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        "berth.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
