"""gRPC over HTTP/2 (PROTOCOL-HTTP2.md): one stream's request to its method and back.

The request's headers name the method (`:path`), its deadline (`grpc-timeout`) and its
compression (`grpc-encoding`); its body is one length-prefixed message. The answer is response
headers, the message, and trailers with `grpc-status`; a call that fails before answering sends
only trailers ("Trailers-Only"). Failures the transport itself finds (no such method, a
malformed message, a deadline) are statuses like the application's.
"""

from __future__ import annotations

import asyncio
import re
import struct
import zlib
from collections.abc import Iterable

from berth.grpc.headers import STATUS_200, Headers, encode_fields, encode_status
from berth.grpc.http2 import Stream
from berth.grpc.rpc import CallContext, Method, MethodTable, RpcError, StatusCode
from berth.grpc.status import status_of

ACCEPTED_ENCODINGS = "identity,deflate,gzip"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_PREFIX = struct.Struct(">BI")
_RESPONSE_HEADERS = STATUS_200 + encode_fields(
    (("content-type", "application/grpc"), ("grpc-accept-encoding", ACCEPTED_ENCODINGS))
)
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_CLIENT_LEAD = 0.05
"""At most this much (and a tenth of the call's timeout) may a client's own deadline timer
fire before ours: a cancel that close to the deadline is the deadline's, in the access log."""
_OK_TRAILER = encode_fields((("grpc-status", "0"),))


class Calls:
    """Answers each complete request of a connection with a method of `methods`."""

    def __init__(self, methods: MethodTable, max_message_bytes: int) -> None:
        self.methods = methods
        self.max_message_bytes = max_message_bytes

    def __call__(self, stream: Stream) -> None:
        stream.task = asyncio.get_running_loop().create_task(self.answer(stream))

    async def answer(self, stream: Stream) -> None:
        headers = stream.headers
        refusal = _http_refusal(headers)
        if refusal is not None:
            stream.send_headers(encode_status(refusal), end_stream=True)
            return
        context = CallContext(_metadata(headers), stream.connection.peer)
        answer = _Answer(stream)
        try:
            method = self.methods.get(headers.get(":path", ""))
            if method is None:
                raise RpcError(
                    StatusCode.UNIMPLEMENTED,
                    f"method {headers.get(':path')} is not served here",
                )
            request = self._request(stream)
            timeout = _timeout(headers.get("grpc-timeout"))
            if timeout is None:
                await self._run(method, request, context, answer)
            else:
                # From the call's start, not from its last byte: a client's deadline covers
                # the upload too.
                context.deadline = stream.opened_at + timeout
                context.client_lead = min(_CLIENT_LEAD, timeout / 10)
                if context.deadline_passed():  # during the upload: the method never starts
                    raise _deadline_passed()
                try:
                    # The deadline's cancellation comes out of the block as TimeoutError.
                    async with asyncio.timeout_at(context.deadline):
                        await self._run(method, request, context, answer)
                except TimeoutError:
                    raise _deadline_passed() from None
        except RpcError as exc:
            answer.end(exc.code, exc.details, (*context.trailers, *exc.trailers))
        except Exception as exc:  # a bug: the client gets an id, the log the traceback
            answer.end(*status_of(exc))

    async def _run(
        self, method: Method, request: bytes, context: CallContext, answer: _Answer
    ) -> None:
        if method.unary is not None:
            framed = self._framed(await method.unary(request, context))
            answer.start()
            answer.stream.send_data(framed)
        else:
            assert method.streaming is not None
            answer.start()
            async for reply in method.streaming(request, context):
                answer.stream.send_data(self._framed(reply))
        answer.end(StatusCode.OK, "", context.trailers)

    def _request(self, stream: Stream) -> bytes:
        limit = self.max_message_bytes
        if stream.oversized:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, _too_large("request", None, limit))
        body = stream.take_body()  # the stream keeps no copy while the call runs
        if len(body) < _PREFIX.size:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                "the call carries no request message; send one (an empty message is 5 bytes)",
            )
        compressed, length = _PREFIX.unpack_from(body)
        if length > limit:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, _too_large("request", length, limit))
        if length != len(body) - _PREFIX.size:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"the request body holds {len(body) - _PREFIX.size} bytes after a message "
                f"prefix of {length}; a unary call carries exactly one message",
            )
        message = bytes(body[_PREFIX.size :])
        if compressed > 1:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"the message's compressed flag is {compressed}; it is 0 or 1",
            )
        if not compressed:
            return message
        return _decompress(message, stream.headers.get("grpc-encoding", "identity"), limit)

    def _framed(self, reply: bytes) -> bytes:
        if len(reply) > self.max_message_bytes:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                _too_large("response", len(reply), self.max_message_bytes),
            )
        return _PREFIX.pack(0, len(reply)) + reply


def _http_refusal(headers: Headers) -> int | None:
    """The HTTP status for a request that is no gRPC call at all."""
    if headers.get(":method") != "POST":
        return 405
    content_type = headers.get("content-type", "")
    if content_type != "application/grpc" and not content_type.startswith(
        ("application/grpc+", "application/grpc;")
    ):
        return 415
    return None


def _metadata(headers: Headers) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in headers.items()
        if not name.startswith(":") and not name.endswith("-bin")
    }


def _deadline_passed() -> RpcError:
    return RpcError(StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    found = _TIMEOUT.fullmatch(value)
    if found is None:
        raise RpcError(
            StatusCode.INVALID_ARGUMENT,
            f"grpc-timeout '{value}' is not up to 8 digits and a unit (H M S m u n)",
        )
    return int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)]


def _decompress(message: bytes, encoding: str, limit: int) -> bytes:
    wbits = _WBITS.get(encoding)
    if wbits is None:
        if encoding == "identity":
            raise RpcError(
                StatusCode.INTERNAL, "the message is flagged compressed but grpc-encoding is none"
            )
        raise RpcError(
            StatusCode.UNIMPLEMENTED,
            f"grpc-encoding '{encoding}' is not supported; use one of {ACCEPTED_ENCODINGS}",
            (("grpc-accept-encoding", ACCEPTED_ENCODINGS),),
        )
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(message, limit + 1)
    except zlib.error as exc:
        raise RpcError(
            StatusCode.INVALID_ARGUMENT, f"the {encoding} message does not decompress ({exc})"
        ) from None
    if len(plain) > limit:
        raise RpcError(StatusCode.RESOURCE_EXHAUSTED, _too_large("request", None, limit))
    if not inflater.eof:
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"the {encoding} message is cut short")
    return plain


def _too_large(what: str, size: int | None, limit: int) -> str:
    measured = f" of {size} bytes" if size is not None else ""
    return (
        f"the {what} message{measured} is larger than the server's limit of {limit} bytes; "
        "send less per call or raise BERTH_GRPC_MAX_MESSAGE_BYTES"
    )


class _Answer:
    """The answer's headers go out once: before the first message, or with the trailers
    ("Trailers-Only") when the call ends without one."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.started = False

    def start(self) -> None:
        self.stream.send_headers(_RESPONSE_HEADERS)
        self.started = True

    def end(self, code: StatusCode, details: str, trailers: Iterable[tuple[str, str]]) -> None:
        block = _trailers(code, details, trailers)
        if not self.started:
            block = _RESPONSE_HEADERS + block
        self.stream.send_headers(block, end_stream=True)


def _trailers(code: StatusCode, details: str, extra: Iterable[tuple[str, str]]) -> bytes:
    if code is StatusCode.OK and not details:
        head = _OK_TRAILER
    else:
        head = encode_fields(
            (("grpc-status", str(int(code))), ("grpc-message", percent_encoded(details)))
        )
    return head + encode_fields(extra)


def percent_encoded(text: str) -> str:
    """grpc-message's encoding: UTF-8, every byte outside printable ASCII and '%' as %XX."""
    return "".join(
        chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}"
        for byte in text.encode()
    )
