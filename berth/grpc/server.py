"""The gRPC server of one worker process: started and stopped with the app (`lifetime`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from berth.api.services import Services
from berth.errors import InvalidInput
from berth.grpc.config import GrpcConfig
from berth.grpc.health import HealthService
from berth.grpc.service import InferenceService

log = logging.getLogger("berth.grpc")

STOP_GRACE_SECONDS = 5.0
"""Calls in flight at shutdown get this long to finish, as uvicorn lets HTTP requests finish."""


def build_server(config: GrpcConfig, svc: Services) -> grpc.aio.Server:
    """A server with the inference and health services, bound but not started."""
    limit = config.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Every worker binds the same port; the kernel spreads connections over them.
            ("grpc.so_reuseport", 1),
        ]
    )
    server.add_generic_rpc_handlers(
        (
            InferenceService(svc, access_log=config.access_log).handler(),
            HealthService(svc.dataplane).handler(),
        )
    )
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
            )
            server.add_secure_port(config.address, credentials)
        else:
            server.add_insecure_port(config.address)
    except RuntimeError as exc:
        raise InvalidInput(
            f"gRPC cannot listen on {config.address} ({exc}); pick another port with "
            "--grpc-port (BERTH_GRPC_PORT)"
        ) from exc
    return server


@asynccontextmanager
async def lifetime(config: GrpcConfig, svc: Services) -> AsyncIterator[None]:
    """Serve gRPC while the block runs (nothing when no port is set)."""
    if config.port is None:
        yield
        return
    server = build_server(config, svc)
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", config.address)
    try:
        yield
    finally:
        await server.stop(STOP_GRACE_SECONDS)
