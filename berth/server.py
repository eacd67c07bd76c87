"""The app `berth serve` runs: the API, with the browser console mounted when it is on and the
gRPC server beside it when a gRPC port is set.

The API (`berth.api`) cannot import the console, which sits above it (the console calls the
admin API's authentication and error mapping); this module, above both, joins them through the
API's `extensions` hook. Worker processes (uvicorn `--factory`) and Ray Serve replicas build
their app here.
"""

from __future__ import annotations

from fastapi import FastAPI

from berth.api.app import Extension, build_services, create_app
from berth.api.services import Services
from berth.config import Settings, load_settings
from berth.console.config import ConsoleConfig
from berth.console.extension import console_extension
from berth.grpc.config import GrpcConfig
from berth.observability import tracing


def create_server_app(settings: Settings | None = None, svc: Services | None = None) -> FastAPI:
    """The API with the console at /console (unless BERTH_CONSOLE=false), and gRPC on
    BERTH_GRPC_PORT while the app runs."""
    settings = settings or Settings()
    svc = svc or build_services(settings)
    config = ConsoleConfig.from_settings(settings)
    extensions: list[Extension] = [console_extension(config)] if config.enabled else []
    grpc_config = GrpcConfig.from_settings(settings)
    if grpc_config.port is not None:
        from berth.grpc.server import lifetime  # grpc is imported only by servers that use it

        extensions.append(lambda _app, served: lifetime(grpc_config, served))
    return create_app(settings, svc, extensions)


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` worker processes: settings come from BERTH_* variables."""
    tracing.configure_from_env()
    return create_server_app(load_settings())
