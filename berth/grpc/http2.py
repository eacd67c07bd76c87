"""The server side of HTTP/2 (RFC 9113), as much of it as gRPC uses, on the event loop.

`grpc.aio` hands each call between its own threads and the event loop several times (an eventfd
write and a thread wake-up each way); on two cores that cost more than Berth's whole answer. This
connection parses frames where the bytes arrive, on the loop the handlers run on, and writes a
whole unary answer (headers, message, trailers) with one call.

Requests: a stream's HEADERS (and CONTINUATION) and its DATA are gathered until END_STREAM, then
`on_request` gets the stream. The application answers with `send_headers` and `send_data`; DATA
waits for the peer's flow-control windows, headers queue behind it so order is kept. What is
received is consumed at once (a request is bounded by the application's message limit), so our
windows are given back as they are used.

Connection errors end in GOAWAY with the error code; stream errors in RST_STREAM. Nothing a peer
sends raises out of `data_received`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import cast

from berth.grpc.headers import (
    MAX_HEADER_LIST_BYTES,
    TABLE_SIZE_ZERO,
    HeaderDecoder,
    HeaderError,
    Headers,
    MalformedHeaders,
)

log = logging.getLogger("berth.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEAD = struct.Struct(">I B I")  # length (24 bits) and type packed in the first word
_FRAME_HEADER = 9


class FrameType(IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class ErrorCode(IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    ENHANCE_YOUR_CALM = 11


END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20

# Settings identifiers
HEADER_TABLE_SIZE = 1
ENABLE_PUSH = 2
MAX_CONCURRENT_STREAMS = 3
INITIAL_WINDOW_SIZE = 4
MAX_FRAME_SIZE = 5
MAX_HEADER_LIST_SIZE = 6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_FRAME_SIZE = 16_384
MAX_FRAME_SIZE_LIMIT = 2**24 - 1

OUR_FRAME_SIZE = 1 << 20
"""Largest frame we accept: big tensors arrive in fewer frames than with the default 16 KiB."""
OUR_STREAM_WINDOW = 8 << 20
OUR_CONNECTION_WINDOW = 64 << 20
OUR_MAX_STREAMS = 1000
MAX_HEADER_BLOCK_BYTES = MAX_HEADER_LIST_BYTES
"""A header block (HEADERS and its CONTINUATIONs) larger than this ends the connection: encoded,
a list within MAX_HEADER_LIST_BYTES is no larger."""
CLOSE_TIMEOUT_SECONDS = 2.0
"""A closing connection whose peer reads nothing is cut off after this long."""


class ConnectionError_(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY and this code."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(eq=False)
class Stream:
    """One request and its answer."""

    id: int
    connection: Connection
    headers: Headers = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    received_all: bool = False
    """END_STREAM arrived: the request is complete."""
    closed: bool = False
    """We ended it (END_STREAM sent or RST_STREAM either way): nothing more goes out."""
    oversized: bool = False
    """The body outgrew the connection's request limit: handed over early, emptied, and what
    else arrives is dropped; the application answers with its error."""
    send_window: int = DEFAULT_WINDOW
    pending: deque[tuple[int, bytes | memoryview, bool]] = field(default_factory=deque)
    """Frames waiting for flow control: (type, payload, end_stream); DATA as a view, so that
    sending a large message frame by frame copies each byte once."""
    unacknowledged: int = 0
    """DATA bytes received since our last WINDOW_UPDATE for this stream."""
    held: int = 0
    """Request bytes counted in the connection's budget until the stream ends (the application
    may take `body` away before that; its message is alive while the call runs)."""
    task: asyncio.Task[None] | None = None
    opened_at: float = 0.0
    """When its HEADERS arrived, in the event loop's time (a call's deadline counts from it)."""

    def send_headers(self, block: bytes, end_stream: bool = False) -> None:
        self.connection.send_headers(self, block, end_stream)

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        self.connection.send_data(self, data, end_stream)

    def take_body(self) -> bytearray:
        """The request's bytes, handed over (they stay counted until the stream ends)."""
        body, self.body = self.body, bytearray()
        return body


RequestHandler = Callable[[Stream], None]
"""Called once a stream's request is complete; it answers through the stream."""


class Connection(asyncio.Protocol):
    def __init__(
        self,
        on_request: RequestHandler,
        on_close: Callable[[Connection], None],
        max_request_bytes: int,
    ) -> None:
        self.on_request = on_request
        self.on_close = on_close
        self.max_request_bytes = max_request_bytes
        # Our windows come back as bytes arrive, so what bounds the memory of requests still
        # arriving is this budget: over it, the stream that grew is refused (REFUSED_STREAM,
        # which clients retry) and the others go on, so no mix of large requests deadlocks.
        self.buffer_budget = 2 * max_request_bytes + (1 << 20)
        self.buffered = 0
        # Streams the client reset while their call still runs: counted against the stream limit
        # until the call ends, so resetting streams at once does not multiply work in flight.
        self.cancelled_running = 0
        self.table_size_sent = False
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.buffer = bytearray()
        self.preface_seen = False
        self.settings_seen = False
        self.decoder = HeaderDecoder()
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.announced_last_stream_id: int | None = None
        """The last stream id our first GOAWAY gave: a later one never gives more (RFC 9113
        6.8), since streams after it were ignored and the client may retry them elsewhere."""
        self.going_away = False
        self.closed = False
        # Our view of the peer
        self.peer_frame_size = DEFAULT_FRAME_SIZE
        self.peer_stream_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW
        self.blocked: dict[int, Stream] = {}
        # Our receiving side: DATA bytes since our last connection WINDOW_UPDATE (what the
        # client may still send is OUR_CONNECTION_WINDOW less these)
        self.unacknowledged = 0
        # A header block being continued: (stream id, end_stream, fragments)
        self.continuing: tuple[int, bool, bytearray] | None = None
        # Frames written in one turn of the loop leave in one write.
        self.out: list[bytes] = []
        self.flush_scheduled = False

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])

    def _start(self) -> None:
        """Our preface, once the client's showed it speaks HTTP/2 (RFC 9113 3.4 allows the
        wait; an HTTP/1 client then reads a plain answer, not frames)."""
        assert self.transport is not None
        settings = (
            (MAX_CONCURRENT_STREAMS, OUR_MAX_STREAMS),
            (INITIAL_WINDOW_SIZE, OUR_STREAM_WINDOW),
            (MAX_FRAME_SIZE, OUR_FRAME_SIZE),
            (MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_BYTES),
            (ENABLE_PUSH, 0),
        )
        payload = b"".join(struct.pack(">HI", key, value) for key, value in settings)
        increase = OUR_CONNECTION_WINDOW - DEFAULT_WINDOW
        self.transport.write(
            _frame(FrameType.SETTINGS, 0, 0, payload) + _window_update(0, increase)
        )

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        try:
            self._read_frames()
        except ConnectionError_ as exc:
            self.abort(exc.code, str(exc))
        except Exception:  # a bug here must not take the worker down: end this connection
            log.exception("HTTP/2 connection from %s failed", self.peer)
            self.abort(ErrorCode.INTERNAL_ERROR, "internal error")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            self._forget(stream, cancel=True)
        self.on_close(self)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        # The peer reads less than it asks for (PINGs, requests): read nothing more until it
        # catches up, so what we owe it cannot grow without bound.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # reading ----------------------------------------------------------------------------

    def _read_frames(self) -> None:
        buffer = self.buffer
        if not self.preface_seen:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._refuse_http1()
                return
            if bytes(buffer[: len(PREFACE)]) != PREFACE:
                self._refuse_http1()
                return
            del buffer[: len(PREFACE)]
            self.preface_seen = True
            self._start()
        offset = 0
        end = len(buffer)
        while end - offset >= _FRAME_HEADER and not self.closed:
            word, flags, stream_id = _HEAD.unpack_from(buffer, offset)
            length, kind = word >> 8, word & 0xFF
            if length > OUR_FRAME_SIZE:
                raise ConnectionError_(
                    ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes is over our limit"
                )
            if end - offset - _FRAME_HEADER < length:
                break
            start = offset + _FRAME_HEADER
            payload = bytes(buffer[start : start + length])
            offset = start + length
            self._frame(kind, flags, stream_id & 0x7FFF_FFFF, payload)
        del buffer[:offset]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if not self.settings_seen:
            if kind != FrameType.SETTINGS or flags & ACK:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "expected SETTINGS first")
            self.settings_seen = True
        if self.continuing is not None and kind != FrameType.CONTINUATION:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
        if kind == FrameType.DATA:
            self._data(flags, stream_id, payload)
        elif kind == FrameType.HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == FrameType.CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == FrameType.SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == FrameType.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == FrameType.PING:
            self._ping(flags, stream_id, payload)
        elif kind == FrameType.RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif kind == FrameType.GOAWAY:
            self._goaway(stream_id, payload)
        elif kind == FrameType.PRIORITY:
            self._priority(stream_id, payload)
        elif kind == FrameType.PUSH_PROMISE:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "clients do not push")
        # Unknown frame types are ignored (RFC 9113 section 4.1).

    def _priority(self, stream_id: int, payload: bytes) -> None:
        """Priorities are advice we do not take; a malformed one is still an error."""
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) == 5:
            return
        # A stream error (RFC 9113 6.3): that stream is reset and the connection goes on. An
        # idle stream cannot be reset (5.1), so there it ends the connection.
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.reset_stream(stream, ErrorCode.FRAME_SIZE_ERROR)
        elif self._idle(stream_id):
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of a wrong length")

    def _idle(self, stream_id: int) -> bool:
        """Never opened: past the client's last stream, or even (ours, and we push nothing)."""
        return stream_id > self.last_stream_id or stream_id % 2 == 0

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if self.unacknowledged + size > OUR_CONNECTION_WINDOW:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "the connection window overrun")
        self._give_back_connection_window(size)
        data = _unpad(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we ended: its DATA may still be on the way
        if stream.received_all:
            self.reset_stream(stream, ErrorCode.STREAM_CLOSED)
            return
        stream.unacknowledged += size
        if stream.unacknowledged > OUR_STREAM_WINDOW:
            self.reset_stream(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        if not stream.oversized:
            stream.body += data
            stream.held += len(data)
            self.buffered += len(data)
            if len(stream.body) > self.max_request_bytes:
                stream.oversized = True
                self._release(stream)
                self.on_request(stream)
            elif self.buffered > self.buffer_budget:
                self.reset_stream(stream, ErrorCode.REFUSED_STREAM)
                return
        if flags & END_STREAM:
            self._complete(stream)
        elif stream.unacknowledged >= OUR_STREAM_WINDOW // 2:
            self._write(_window_update(stream_id, stream.unacknowledged))
            stream.unacknowledged = 0

    def _give_back_connection_window(self, size: int) -> None:
        self.unacknowledged += size
        if self.unacknowledged >= OUR_CONNECTION_WINDOW // 2:
            self._write(_window_update(0, self.unacknowledged))
            self.unacknowledged = 0

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        fragment = _unpad(flags, payload)
        if flags & PRIORITY:
            if len(fragment) < 5:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS too short for PRIORITY")
            fragment = fragment[5:]
        if len(fragment) > MAX_HEADER_BLOCK_BYTES:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "a header block is too large")
        if flags & END_HEADERS:
            self._header_block(stream_id, bool(flags & END_STREAM), fragment)
        else:
            self.continuing = (stream_id, bool(flags & END_STREAM), bytearray(fragment))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is None or self.continuing[0] != stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "CONTINUATION out of place")
        _, end_stream, block = self.continuing
        block += payload
        if len(block) > MAX_HEADER_BLOCK_BYTES:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "a header block is too large")
        if flags & END_HEADERS:
            self.continuing = None
            self._header_block(stream_id, end_stream, bytes(block))

    def _header_block(self, stream_id: int, end_stream: bool, block: bytes) -> None:
        headers: Headers | None
        try:
            headers = self.decoder.decode(block)  # always: the table must stay in step
        except HeaderError as exc:
            raise ConnectionError_(ErrorCode.COMPRESSION_ERROR, str(exc)) from exc
        except MalformedHeaders:
            headers = None
        stream = self.streams.get(stream_id)
        if stream is not None:
            # Trailers from the client: gRPC requests have none worth keeping.
            if stream.received_all:
                self.reset_stream(stream, ErrorCode.STREAM_CLOSED)
            elif not end_stream or headers is None:
                self.reset_stream(stream, ErrorCode.PROTOCOL_ERROR)
            else:
                self._complete(stream)
            return
        if stream_id % 2 == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"stream {stream_id} is even")
        if stream_id <= self.last_stream_id:
            return  # a stream we ended or refused: what the client still sends is ignored
        self.last_stream_id = stream_id
        if self.going_away:
            return  # beyond GOAWAY: ignored, the client retries elsewhere
        if headers is None:
            self._write(_rst_stream(stream_id, ErrorCode.PROTOCOL_ERROR))
            return
        if len(self.streams) + self.cancelled_running >= OUR_MAX_STREAMS:
            self._write(_rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        stream = Stream(
            stream_id,
            self,
            headers,
            send_window=self.peer_stream_window,
            opened_at=asyncio.get_running_loop().time(),
        )
        self.streams[stream_id] = stream
        if end_stream:
            self._complete(stream)

    def _complete(self, stream: Stream) -> None:
        stream.received_all = True
        if not stream.oversized:  # else the application has it already
            self.on_request(stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a wrong length")
        for index in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, index)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "window over 2^31-1")
                change = value - self.peer_stream_window
                self.peer_stream_window = value
                for stream in self.streams.values():
                    stream.send_window += change
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "window over 2^31-1")
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_frame_size = value
            elif key == ENABLE_PUSH and value > 1:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH is not 0 or 1")
        self._write(_frame(FrameType.SETTINGS, ACK, 0, b""))
        self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong length")
        increment = struct.unpack(">I", payload)[0] & 0x7FFF_FFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a zero window increment")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "window over 2^31-1")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return  # a stream we closed: updates may still be on their way
        if increment == 0:
            self.reset_stream(stream, ErrorCode.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self.reset_stream(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        self._flush(stream)

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PING of a wrong length")
        if not flags & ACK:
            self._write(_frame(FrameType.PING, ACK, 0, payload))

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of a wrong length")
        if self._idle(stream_id):
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.closed = True
            self._forget(stream, cancel=True)

    def _goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY of a wrong length")
        self.going_away = True
        self._close_when_idle()

    # writing ----------------------------------------------------------------------------

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool) -> None:
        if stream.closed:
            return
        if stream.pending:
            stream.pending.append((FrameType.HEADERS, block, end_stream))
            return
        self._write(self._header_frames(stream.id, block, end_stream))
        if end_stream:
            self._finish(stream)

    def send_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if stream.closed:
            return
        stream.pending.append((FrameType.DATA, memoryview(data), end_stream))
        self._flush(stream)

    def reset_stream(self, stream: Stream, code: ErrorCode) -> None:
        if not stream.closed:
            stream.closed = True
            self._write(_rst_stream(stream.id, code))
        self._forget(stream, cancel=True)

    def _header_frames(self, stream_id: int, block: bytes | memoryview, end_stream: bool) -> bytes:
        if not self.table_size_sent:
            # A dynamic table size of 0, once: we never index, and a peer that set its
            # SETTINGS_HEADER_TABLE_SIZE below the default expects such an update (RFC 7541 4.2).
            block = TABLE_SIZE_ZERO + block
            self.table_size_sent = True
        flags = END_STREAM if end_stream else 0
        limit = self.peer_frame_size
        if len(block) <= limit:
            return _frame(FrameType.HEADERS, flags | END_HEADERS, stream_id, block)
        frames = [_frame(FrameType.HEADERS, flags, stream_id, block[:limit])]
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            frames.append(
                _frame(
                    FrameType.CONTINUATION,
                    END_HEADERS if last else 0,
                    stream_id,
                    block[start : start + limit],
                )
            )
        return b"".join(frames)

    def _flush(self, stream: Stream) -> None:
        """Write what flow control allows of the stream's queued frames."""
        out: list[bytes] = []
        pending = stream.pending
        while pending and not stream.closed:
            kind, payload, end_stream = pending[0]
            if kind == FrameType.HEADERS:
                pending.popleft()
                out.append(self._header_frames(stream.id, payload, end_stream))
                if end_stream:
                    stream.closed = True
                continue
            allowed = min(stream.send_window, self.send_window, self.peer_frame_size)
            if allowed <= 0 and payload:
                self.blocked[stream.id] = stream
                break
            chunk = payload[:allowed]
            rest = payload[allowed:]
            last = not rest
            out.append(
                _frame(FrameType.DATA, END_STREAM if end_stream and last else 0, stream.id, chunk)
            )
            stream.send_window -= len(chunk)
            self.send_window -= len(chunk)
            if last:
                pending.popleft()
                if end_stream:
                    stream.closed = True
            else:
                pending[0] = (kind, rest, end_stream)
        if out:
            self._write(b"".join(out))
        if stream.closed and not pending:
            self._finish(stream)

    def _flush_blocked(self) -> None:
        blocked, self.blocked = self.blocked, {}
        for stream in blocked.values():
            if self.send_window <= 0:
                self.blocked[stream.id] = stream
                continue
            self._flush(stream)

    def _finish(self, stream: Stream) -> None:
        stream.closed = True
        if not stream.received_all:
            # We answered before the request ended: tell the client to stop sending.
            self._write(_rst_stream(stream.id, ErrorCode.NO_ERROR))
        self._forget(stream, cancel=False)

    def _release(self, stream: Stream) -> None:
        self.buffered -= stream.held
        stream.held = 0
        stream.body = bytearray()

    def _forget(self, stream: Stream, cancel: bool) -> None:
        self._release(stream)
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        stream.pending.clear()
        if cancel and stream.task is not None and not stream.task.done():
            stream.task.cancel()
            self.cancelled_running += 1
            stream.task.add_done_callback(self._cancelled_call_ended)
        if self.going_away:
            self._close_when_idle()

    def _cancelled_call_ended(self, _task: asyncio.Task[None]) -> None:
        self.cancelled_running -= 1

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_out)

    def _write_out(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # ending -----------------------------------------------------------------------------

    def go_away(self) -> None:
        """Take no new streams; close once the ones in flight are answered."""
        if self.closed or self.going_away:
            return
        if not self.preface_seen:  # no HTTP/2 spoken yet: nothing to tell
            self._close()
            return
        self.going_away = True
        self._write(_goaway_frame(self._last_processed(), ErrorCode.NO_ERROR))
        self._close_when_idle()

    def abort(self, code: ErrorCode, reason: str) -> None:
        if self.closed:
            return
        if code != ErrorCode.NO_ERROR:
            log.info("closing the HTTP/2 connection from %s: %s", self.peer, reason)
        self._write(_goaway_frame(self._last_processed(), code, reason))
        self._close()

    def _last_processed(self) -> int:
        """The stream id a GOAWAY gives: the client's last, or the first GOAWAY's if one went."""
        if self.announced_last_stream_id is None:
            self.announced_last_stream_id = self.last_stream_id
        return self.announced_last_stream_id

    def close(self) -> None:
        """Close at once, whatever is unsent; calls still running are cancelled."""
        self._close(force=True)

    def _close_when_idle(self) -> None:
        if not self.streams:
            self._close()

    def _close(self, force: bool = False) -> None:
        if self.closed and not force:
            return
        if not self.closed:
            self._write_out()
            self.closed = True
        if self.transport is None:
            return
        if force:
            self.transport.abort()
        else:
            self.transport.close()  # after what is buffered, unless the peer never reads it
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_SECONDS, self.transport.abort)

    def _refuse_http1(self) -> None:
        """Someone spoke HTTP/1 (curl, a browser) to the gRPC port: say so, then close."""
        text = b"this port speaks gRPC over HTTP/2; use a gRPC client, or the HTTP port for REST\n"
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(text), text)
            )
        self._close()


def _frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview) -> bytes:
    return _HEAD.pack((len(payload) << 8) | kind, flags, stream_id) + payload


def _goaway_frame(last_stream_id: int, code: ErrorCode, reason: str = "") -> bytes:
    payload = struct.pack(">II", last_stream_id, code) + reason.encode()[:256]
    return _frame(FrameType.GOAWAY, 0, 0, payload)


def _rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return _frame(FrameType.RST_STREAM, 0, stream_id, struct.pack(">I", code))


def _window_update(stream_id: int, increment: int) -> bytes:
    return _frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload:
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a padded frame without its length")
    padding = payload[0]
    if padding >= len(payload):
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - padding]
