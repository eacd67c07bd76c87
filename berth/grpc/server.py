"""The gRPC server of one worker process: started and stopped with the app (`lifetime`).

It listens on the worker's own event loop (`berth.grpc.http2`), beside uvicorn; every worker
binds the same port with SO_REUSEPORT and the kernel spreads connections over them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from berth.api.services import Services
from berth.errors import InvalidInput
from berth.grpc.calls import Calls
from berth.grpc.config import GrpcConfig
from berth.grpc.health import HealthService
from berth.grpc.http2 import Connection
from berth.grpc.rpc import MethodTable
from berth.grpc.service import InferenceService

log = logging.getLogger("berth.grpc")

STOP_GRACE_SECONDS = 5.0
"""Calls in flight at shutdown get this long to finish, as uvicorn lets HTTP requests finish."""


class GrpcServer:
    def __init__(self, config: GrpcConfig, methods: MethodTable) -> None:
        self.config = config
        self.calls = Calls(methods, config.max_message_bytes)
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        config = self.config
        try:
            self.server = await asyncio.get_running_loop().create_server(
                self._connection,
                config.host,
                config.port,
                reuse_port=True,
                ssl=self._tls(),
                backlog=1024,
            )
        except OSError as exc:
            raise InvalidInput(
                f"gRPC cannot listen on {config.address} ({exc.strerror or exc}); pick another "
                "port with --grpc-port (BERTH_GRPC_PORT)"
            ) from exc

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop listening, let calls in flight finish for up to `grace` seconds, then close."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.go_away()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.close()
        if self.server is not None:
            await self.server.wait_closed()

    def _connection(self) -> Connection:
        # A request's body is its message and the message's 5-byte prefix.
        connection = Connection(
            self.calls, self.connections.discard, self.calls.max_message_bytes + 5
        )
        self.connections.add(connection)
        return connection

    def _tls(self) -> ssl.SSLContext | None:
        config = self.config
        if config.tls_cert is None or config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
        context.set_alpn_protocols(["h2"])  # gRPC clients insist on it
        return context


def methods_of(config: GrpcConfig, svc: Services) -> MethodTable:
    return {
        **InferenceService(svc, access_log=config.access_log).methods(),
        **HealthService(svc.dataplane).methods(),
    }


@asynccontextmanager
async def lifetime(config: GrpcConfig, svc: Services) -> AsyncIterator[None]:
    """Serve gRPC while the block runs (nothing when no port is set)."""
    if config.port is None:
        yield
        return
    server = GrpcServer(config, methods_of(config, svc))
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", config.address)
    try:
        yield
    finally:
        await server.stop()
