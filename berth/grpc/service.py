"""`inference.GRPCInferenceService`: the Open Inference Protocol's six calls over gRPC.

Each call is answered by the code REST's v2 routes use (`berth.api.v2`): the same name
resolution (models, versions, aliases, endpoints with their routing, sticky keys and shadows),
the same authentication, scopes and rate limits (`berth.api.auth`), the process's concurrency
cap and the dataplane's timeout. What differs is only the envelope: metadata for headers,
status codes for HTTP statuses (`berth.grpc.status`), protocol buffers for JSON.

Calls Triton serves beyond the protocol (model repository, statistics, shared memory, ...)
are not registered, so gRPC answers them UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message

from berth import __version__
from berth.api import v2
from berth.api.auth import Caller, credentials_in
from berth.api.services import Services
from berth.errors import InvalidInput, NotReady
from berth.grpc import tensors
from berth.grpc.generated import open_inference_grpc_pb2 as pb
from berth.grpc.rpc import CallContext, Method, MethodTable, RpcError, StatusCode, Unary
from berth.grpc.status import status_of
from berth.observability import tracing
from berth.observability.logging import request_context
from berth.observability.metrics import PROTOCOL
from berth.security.auth import Principal
from berth.serving.ids import REQUEST_ID_PATTERN, new_id
from berth.serving.responses import result_headers

log = logging.getLogger("berth.access")

SERVICE = "inference.GRPCInferenceService"
_SAFE_ID = re.compile(REQUEST_ID_PATTERN)


@dataclass
class Call:
    """One call as the handlers see it."""

    metadata: Mapping[str, str]
    """The client's text metadata, lower-case names (`-bin` entries left out)."""
    caller: Caller
    trailers: list[tuple[str, str]]
    """Trailing metadata to send back, whatever the outcome."""


Handler = Callable[[Any, Call], Awaitable[Message]]


class InferenceService:
    def __init__(self, svc: Services, access_log: bool = False) -> None:
        self.svc = svc
        self.access_log = access_log

    def methods(self) -> MethodTable:
        calls: dict[str, tuple[Handler, type[Message]]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        return {
            f"/{SERVICE}/{rpc}": Method(unary=self._unary(rpc, handler, request_type))
            for rpc, (handler, request_type) in calls.items()
        }

    # the calls ----------------------------------------------------------------------------

    async def server_live(self, _request: pb.ServerLiveRequest, call: Call) -> Message:
        await self.svc.auth.limit_caller_address(call.caller)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _request: pb.ServerReadyRequest, call: Call) -> Message:
        await self.svc.auth.limit_caller_address(call.caller)
        return pb.ServerReadyResponse(ready=self.svc.dataplane.ready)

    async def server_metadata(self, _request: pb.ServerMetadataRequest, call: Call) -> Message:
        await self.svc.auth.limit_caller_address(call.caller)
        # REST's one extension (binary tensor data) is what gRPC's raw contents always are.
        return pb.ServerMetadataResponse(name="berth", version=__version__, extensions=[])

    async def model_ready(self, request: pb.ModelReadyRequest, call: Call) -> Message:
        (await self._principal(call)).require_read(request.name)
        try:
            await v2.check_ready(self.svc, request.name, request.version or None)
        except NotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: pb.ModelMetadataRequest, call: Call) -> Message:
        (await self._principal(call)).require_read(request.name)
        document = await v2.metadata(self.svc, request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=document["name"],
            versions=document["versions"],
            platform=document["platform"],
            inputs=[_tensor_metadata(t) for t in document["inputs"]],
            outputs=[_tensor_metadata(t) for t in document["outputs"]],
        )

    async def model_infer(self, request: pb.ModelInferRequest, call: Call) -> Message:
        principal = await self._principal(call)
        name, version = request.model_name, request.model_version or None
        if not name:
            raise InvalidInput("model_name is empty; name the model (or endpoint) to call")
        model = v2.inference_model(name, version)
        principal.require_predict(model)
        await self.svc.auth.limit_caller_model(call.caller, model)
        cap = self.svc.cap
        if not cap.enter():
            raise NotReady(cap.refusal(), retry_after=1)
        try:
            size = sum(map(len, request.raw_input_contents)) or request.ByteSize()

            async def parse(shapes: Any) -> Any:
                return await self.svc.dataplane.offload.run(
                    size, tensors.parse_infer_request, request, shapes
                )

            done = await v2.run_inference(self.svc, name, version, parse, call.metadata, size)
        finally:
            cap.leave()
        call.trailers.extend((k.lower(), v) for k, v in result_headers(done.result).items())
        with tracing.span("encode"):
            return tensors.encode_infer_response(
                done.name, str(done.result.version.number), done.request.id, done.outputs
            )

    # the envelope -------------------------------------------------------------------------

    async def _principal(self, call: Call) -> Principal:
        return await self.svc.auth.authenticate_caller(call.caller, credentials_in(call.metadata))

    def _unary(self, rpc: str, handler: Handler, request_type: type[Message]) -> Unary:
        async def answer(data: bytes, context: CallContext) -> bytes:
            return await self._answer(rpc, handler, request_type, data, context)

        return answer

    async def _answer(
        self,
        rpc: str,
        handler: Handler,
        request_type: type[Message],
        data: bytes,
        context: CallContext,
    ) -> bytes:
        metadata = context.metadata
        request_id = _request_id(metadata)
        call = Call(metadata, Caller(context.peer, f"gRPC {rpc}"), context.trailers)
        call.trailers.append(("x-request-id", request_id))
        token = PROTOCOL.set("grpc")
        started = time.perf_counter()
        code = StatusCode.OK
        try:
            with (
                request_context(request_id=request_id),
                tracing.server_span(f"gRPC {rpc}", metadata, **{"rpc.method": rpc}),
            ):
                parent = tracing.traceparent()
                if parent is not None:
                    call.trailers.append(("traceparent", parent))
                try:
                    response = await handler(_parse(request_type, data), call)
                    return bytes(response.SerializeToString())
                except Exception as exc:  # every failure becomes a status
                    code, details, extra = status_of(exc)
                    raise RpcError(code, details, extra) from None
                except BaseException:  # the client went away, or the deadline passed
                    passed = context.cancelled_by_deadline()
                    code = StatusCode.DEADLINE_EXCEEDED if passed else StatusCode.CANCELLED
                    raise
                finally:
                    if self.access_log:
                        _log_call(rpc, code, started, call.caller.address)
        finally:
            PROTOCOL.reset(token)


def _request_id(metadata: Mapping[str, str]) -> str:
    given = metadata.get("x-request-id", "")
    return given if _SAFE_ID.fullmatch(given) else new_id()


def _tensor_metadata(document: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=document["name"], datatype=document["datatype"], shape=document["shape"]
    )


def _parse(request_type: type[Message], data: bytes) -> Message:
    """The request's message; bytes that are not one are the client's error, not INTERNAL."""
    try:
        return request_type.FromString(data)
    except DecodeError as exc:
        raise InvalidInput(
            f"the request is not a valid {request_type.DESCRIPTOR.full_name} message ({exc}); "
            "build it from the protocol's .proto file"
        ) from None


def _log_call(rpc: str, code: StatusCode, started: float, client: str) -> None:
    log.info(
        "gRPC %s %s",
        rpc,
        code.name,
        extra={
            "method": "gRPC",
            "path": f"/{SERVICE}/{rpc}",
            "status": code.name,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "client": client,
        },
    )
