"""`grpc.health.v1.Health`: what Kubernetes' gRPC probe and load balancers ask.

SERVING once every served model is loaded (REST's /v2/health/ready), NOT_SERVING before.
The empty service name means the whole server; `inference.GRPCInferenceService` is the same.
Unauthenticated, as REST's health routes are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf.message import DecodeError

from berth.grpc.generated import health_pb2 as pb
from berth.grpc.rpc import CallContext, Method, MethodTable, RpcError, StatusCode
from berth.grpc.service import SERVICE
from berth.serving.dataplane import DataPlane

HEALTH_SERVICE = "grpc.health.v1.Health"
WATCH_INTERVAL_SECONDS = 1.0
_KNOWN = frozenset({"", SERVICE})
Status = pb.HealthCheckResponse.ServingStatus


class HealthService:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def methods(self) -> MethodTable:
        return {
            f"/{HEALTH_SERVICE}/Check": Method(unary=self.check),
            f"/{HEALTH_SERVICE}/Watch": Method(streaming=self.watch),
        }

    def status(self) -> pb.HealthCheckResponse.ServingStatus:
        return Status.SERVING if self.dataplane.ready else Status.NOT_SERVING

    async def check(self, data: bytes, _context: CallContext) -> bytes:
        request = _request(data)
        if request.service not in _KNOWN:
            raise RpcError(
                StatusCode.NOT_FOUND,
                f"no service '{request.service}' here; ask for '' (the server) or '{SERVICE}'",
            )
        return bytes(pb.HealthCheckResponse(status=self.status()).SerializeToString())

    async def watch(self, data: bytes, _context: CallContext) -> AsyncIterator[bytes]:
        """The status now, then again each time it changes, until the client hangs up."""
        request = _request(data)
        if request.service not in _KNOWN:
            # The health protocol: say so, and keep the call open (the service may appear).
            yield _serialized(Status.SERVICE_UNKNOWN)
            await asyncio.Event().wait()
        last = None
        while True:
            current = self.status()
            if current != last:
                yield _serialized(current)
                last = current
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)


def _request(data: bytes) -> pb.HealthCheckRequest:
    try:
        return pb.HealthCheckRequest.FromString(data)
    except DecodeError as exc:
        raise RpcError(
            StatusCode.INVALID_ARGUMENT, f"not a grpc.health.v1.HealthCheckRequest ({exc})"
        ) from None


def _serialized(status: pb.HealthCheckResponse.ServingStatus) -> bytes:
    return bytes(pb.HealthCheckResponse(status=status).SerializeToString())
