"""What the gRPC edge reads from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from berth.config import Settings


@dataclass(frozen=True)
class GrpcConfig:
    """The gRPC server of one worker process."""

    port: int | None
    """Where it listens (every worker on the same port, the kernel spreading connections);
    None: no gRPC server."""
    host: str
    """The address it binds, the HTTP server's."""
    max_message_bytes: int
    """Largest message received or sent; beyond it the call fails with RESOURCE_EXHAUSTED."""
    tls_cert: Path | None
    """With `tls_key`: serve TLS with the HTTP server's certificate."""
    tls_key: Path | None
    access_log: bool
    """One log line per call, as the HTTP access log writes one per request."""

    @classmethod
    def from_settings(cls, settings: Settings) -> GrpcConfig:
        return cls(
            port=settings.grpc_port,
            host=settings.host,
            max_message_bytes=settings.grpc_max_message_bytes,
            tls_cert=settings.tls_cert_file,
            tls_key=settings.tls_key_file,
            access_log=settings.access_log,
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
