"""The gRPC client of `berth bench --protocol grpc`.

The bench resolves a model to an Open Inference Protocol REST request as for `--protocol v2`
(its example rows, its version); here that request becomes a ModelInferRequest, serialized once,
and each connection (a channel of its own, so the server's workers share the load) repeats it.
gRPC statuses are counted as their HTTP equivalents (OK is 200, NOT_FOUND 404, ...), so the
report reads the same for every protocol.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc

from berth.api import v2_codec
from berth.errors import InvalidInput
from berth.grpc.service import SERVICE
from berth.grpc.tensors import encode_infer_request
from berth.ops.http1 import Response

INFER = f"/{SERVICE}/ModelInfer"
_V2_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")

# The HTTP status gRPC's own documentation pairs with each code (statuscodes.md).
HTTP_EQUIVALENT = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def infer_payload(path: str, body: bytes) -> bytes:
    """The serialized ModelInferRequest for a v2 REST inference request (its path and JSON)."""
    found = _V2_PATH.fullmatch(path)
    if found is None:
        raise InvalidInput(f"{path} is not an inference route; name a model to bench over gRPC")
    request = v2_codec.parse_infer_request(body, None)
    message = encode_infer_request(found["name"], found["version"], request)
    return message.SerializeToString()


class GrpcExchanger:
    """One channel (one HTTP/2 connection) calling ModelInfer with the same payload."""

    def __init__(
        self,
        target: str,
        metadata: Sequence[tuple[str, str]],
        root_certificates: bytes | None = None,
        tls: bool = False,
    ) -> None:
        self.target = target
        self.metadata = tuple(metadata)
        self.tls = tls
        self.root_certificates = root_certificates
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] | None = None

    async def exchange(self, payload: bytes) -> Response:
        if self._call is None:
            self._call = self._open().unary_unary(INFER)
        try:
            await self._call(payload, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            status = HTTP_EQUIVALENT.get(exc.code(), 500)
            return Response(status, (exc.details() or exc.code().name).encode(), True)
        return Response(200, b"", True)

    def _open(self) -> grpc.aio.Channel:
        # Without a local subchannel pool, channels to one address share one connection.
        options = [("grpc.use_local_subchannel_pool", 1)]
        if self.tls:
            credentials = grpc.ssl_channel_credentials(self.root_certificates)
            self._channel = grpc.aio.secure_channel(self.target, credentials, options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._call = None
