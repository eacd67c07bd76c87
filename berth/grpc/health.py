"""`grpc.health.v1.Health`: what Kubernetes' gRPC probe and load balancers ask.

SERVING once every served model is loaded (REST's /v2/health/ready), NOT_SERVING before.
The empty service name means the whole server; `inference.GRPCInferenceService` is the same.
Unauthenticated, as REST's health routes are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from berth.grpc.generated import health_pb2 as pb
from berth.grpc.service import SERVICE
from berth.serving.dataplane import DataPlane

HEALTH_SERVICE = "grpc.health.v1.Health"
WATCH_INTERVAL_SECONDS = 1.0
_KNOWN = frozenset({"", SERVICE})
Status = pb.HealthCheckResponse.ServingStatus


class HealthService:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            HEALTH_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check,
                    request_deserializer=pb.HealthCheckRequest.FromString,
                    response_serializer=pb.HealthCheckResponse.SerializeToString,
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.watch,
                    request_deserializer=pb.HealthCheckRequest.FromString,
                    response_serializer=pb.HealthCheckResponse.SerializeToString,
                ),
            },
        )

    def status(self) -> pb.HealthCheckResponse.ServingStatus:
        return Status.SERVING if self.dataplane.ready else Status.NOT_SERVING

    async def check(
        self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthCheckResponse:
        if request.service not in _KNOWN:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no service '{request.service}' here; ask for '' (the server) or '{SERVICE}'",
            )
        return pb.HealthCheckResponse(status=self.status())

    async def watch(
        self, request: pb.HealthCheckRequest, _context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.HealthCheckResponse]:
        """The status now, then again each time it changes, until the client hangs up."""
        if request.service not in _KNOWN:
            yield pb.HealthCheckResponse(status=Status.SERVICE_UNKNOWN)
            return
        last = None
        while True:
            current = self.status()
            if current != last:
                yield pb.HealthCheckResponse(status=current)
                last = current
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
