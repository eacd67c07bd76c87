"""Berth's gRPC transport (`berth.grpc.http2`, `berth.grpc.calls`) against two independent
HTTP/2 implementations: grpcio's C core, as gRPC clients use it, and the `h2` package, which lets
a test send exactly the frames it wants (tiny windows, padding, CONTINUATION, PING, garbage).

The server runs a small method table of its own on a real socket, in a thread's event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from berth.grpc.calls import percent_encoded
from berth.grpc.config import GrpcConfig
from berth.grpc.rpc import CallContext, Method, MethodTable, RpcError, StatusCode
from berth.grpc.server import GrpcServer
from berth.grpc.service import _request_id
from tests.ports import free_port

LIMIT = 32 << 20
BIG = 20 << 20


class Methods:
    """What the test server answers; `started` and `cancelled` record Slow's calls (by their
    message) that began, and that the client abandoned."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []

    def table(self) -> MethodTable:
        return {
            "/test.T/Echo": Method(unary=self.echo),
            "/test.T/Big": Method(unary=self.big),
            "/test.T/Slow": Method(unary=self.slow),
            "/test.T/Fail": Method(unary=self.fail),
            "/test.T/Refuse": Method(unary=self.refuse),
            "/test.T/Count": Method(streaming=self.count),
        }

    async def echo(self, data: bytes, context: CallContext) -> bytes:
        context.trailers.append(("x-seen-key", context.metadata.get("x-api-key", "")))
        return data

    async def big(self, data: bytes, _context: CallContext) -> bytes:
        return b"b" * int(data)

    async def slow(self, data: bytes, _context: CallContext) -> bytes:
        self.started.append(data.decode())
        try:
            await asyncio.sleep(float(data))
        except asyncio.CancelledError:
            self.cancelled.append(data.decode())
            raise
        return b"done"

    async def fail(self, _data: bytes, _context: CallContext) -> bytes:
        raise ZeroDivisionError("secret detail")

    async def refuse(self, _data: bytes, _context: CallContext) -> bytes:
        raise RpcError(
            StatusCode.NOT_FOUND, "no such thing: 100% gone, naïve", (("x-why", "test"),)
        )

    async def count(self, data: bytes, _context: CallContext) -> AsyncIterator[bytes]:
        for index in range(int(data)):
            yield str(index).encode()


class Running:
    def __init__(self, methods: Methods, limit: int = LIMIT) -> None:
        self.methods = methods
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = GrpcConfig(self.port, "127.0.0.1", limit, None, None, False)
        self.server = GrpcServer(config, methods.table())
        self.call(self.server.start())

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    server = Running(Methods())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(running: Running) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{running.port}", options) as opened:
        yield opened


def _unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/test.T/{method}")


# through grpcio's client ---------------------------------------------------------------------


def test_twenty_megabytes_each_way_under_flow_control(channel: grpc.Channel) -> None:
    payload = bytes(range(256)) * (BIG // 256)
    reply, call = _unary(channel, "Echo").with_call(
        payload, metadata=[("x-api-key", "k1")], timeout=30
    )
    assert reply == payload
    assert dict(call.trailing_metadata())["x-seen-key"] == "k1"
    assert _unary(channel, "Big")(str(BIG).encode(), timeout=30) == b"b" * BIG


def test_gzip_and_deflate_requests_are_decompressed(channel: grpc.Channel) -> None:
    payload = b"iris " * 10_000
    for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        assert _unary(channel, "Echo")(payload, compression=compression, timeout=10) == payload


def test_a_passed_deadline_is_deadline_exceeded_and_the_handler_is_cancelled(
    running: Running, channel: grpc.Channel
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _unary(channel, "Slow")(b"5.01", timeout=1.0)  # time for the handler to start
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for(lambda: "5.01" in running.methods.cancelled)


def test_a_client_that_cancels_cancels_the_handler(running: Running, channel: grpc.Channel) -> None:
    future = _unary(channel, "Slow").future(b"5.02")
    _wait_for(lambda: "5.02" in running.methods.started)  # cancelled in the handler, not before
    future.cancel()
    _wait_for(lambda: "5.02" in running.methods.cancelled)
    assert _unary(channel, "Echo")(b"still here", timeout=5) == b"still here"


def test_statuses_details_and_trailers_arrive(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _unary(channel, "Refuse")(b"", timeout=5)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == "no such thing: 100% gone, naïve"
    assert dict(refused.value.trailing_metadata())["x-why"] == "test"
    with pytest.raises(grpc.RpcError) as failed:
        _unary(channel, "Fail")(b"", timeout=5)
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in failed.value.details()
    assert "logged it with id" in failed.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        _unary(channel, "Nothing")(b"", timeout=5)
    assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "/test.T/Nothing" in unknown.value.details()


def test_a_request_over_the_limit_is_resource_exhausted() -> None:
    server = Running(Methods(), limit=1 << 20)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as small:
            with pytest.raises(grpc.RpcError) as raised:
                _unary(small, "Echo")(b"x" * (2 << 20), timeout=10)
            assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "BERTH_GRPC_MAX_MESSAGE_BYTES" in raised.value.details()
            with pytest.raises(grpc.RpcError) as answered:
                _unary(small, "Big")(str(2 << 20).encode(), timeout=10)
            assert answered.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _unary(small, "Echo")(b"small", timeout=10) == b"small"
            exactly = b"x" * (1 << 20)  # the limit is the message's, not its 5-byte prefix's
            assert _unary(small, "Echo")(exactly, timeout=10) == exactly
    finally:
        server.stop()


def test_server_streaming_sends_every_message(channel: grpc.Channel) -> None:
    replies = list(channel.unary_stream("/test.T/Count")(b"50", timeout=10))
    assert replies == [str(i).encode() for i in range(50)]


def test_stopping_lets_calls_in_flight_finish_and_refuses_new_ones() -> None:
    server = Running(Methods())
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        assert _unary(opened, "Echo")(b"warm", timeout=5) == b"warm"
        future = _unary(opened, "Slow").future(b"0.5")
        _wait_for(lambda: "0.5" in server.methods.started)  # in flight, not yet arrived
        server.stop(grace=5)
        assert future.result(timeout=5) == b"done"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


# frame by frame, through h2 ------------------------------------------------------------------


class RawClient:
    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.flush()
        self.events: list[h2.events.Event] = []

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def open(self, path: str, end_stream: bool = False, **headers: str) -> int:
        """A new stream with a call's headers (`content_type` overrides the gRPC one)."""
        stream = self.h2.get_next_available_stream_id()
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "test"),
            ("content-type", headers.pop("content_type", "application/grpc")),
            ("te", "trailers"),
            *headers.items(),
        ]
        self.h2.send_headers(stream, fields, end_stream=end_stream)
        self.flush()
        return stream

    def request(self, path: str, message: bytes, **headers: str) -> int:
        stream = self.open(path, **headers)
        self.h2.send_data(stream, struct.pack(">BI", 0, len(message)) + message, end_stream=True)
        self.flush()
        return stream

    def until(self, done: Any, acknowledge: bool = True) -> list[h2.events.Event]:
        """Read until `done(events)`; DATA is acknowledged as read, as a client would."""
        while not done(self.events):
            data = self.sock.recv(65536)
            if not data:
                break
            for event in self.h2.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived) and acknowledge:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.flush()
        return self.events

    def answer(self, stream: int) -> tuple[bytes, dict[str, str]]:
        self.until(lambda events: any(_ended(e, stream) for e in events))
        body = b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream
        )
        trailers: dict[str, str] = {}
        for event in self.events:
            answered = isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived)
            if answered and event.stream_id == stream:
                trailers.update(dict(event.headers))
        return body[5:], trailers

    def close(self) -> None:
        self.sock.close()


def _ended(event: h2.events.Event, stream: int) -> bool:
    return isinstance(event, h2.events.StreamEnded | h2.events.StreamReset) and (
        event.stream_id == stream
    )


@pytest.fixture
def raw(running: Running) -> Iterator[RawClient]:
    client = RawClient(running.port)
    yield client
    client.close()


def test_a_client_with_tiny_windows_gets_the_whole_answer(running: Running) -> None:
    client = RawClient(running.port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    try:
        stream = client.request("/test.T/Big", b"300000")
        body, trailers = client.answer(stream)
        sizes = [len(e.data) for e in client.events if isinstance(e, h2.events.DataReceived)]
    finally:
        client.close()
    assert body == b"b" * 300_000
    assert trailers["grpc-status"] == "0"
    assert max(sizes) <= 1000  # h2 itself fails the connection on any window overrun


def test_requests_still_arriving_are_held_within_a_budget_without_deadlock() -> None:
    server = Running(Methods(), limit=1 << 20)  # a budget of 2 x 1 MiB + 1 MiB a connection
    client = RawClient(server.port)
    try:
        client.until(lambda ev: any(isinstance(e, h2.events.WindowUpdated) for e in ev))
        size = 1_000_000
        streams = []
        for _ in range(4):
            stream = client.open("/test.T/Echo")
            client.h2.send_data(stream, struct.pack(">BI", 0, size) + b"a" * 900_000)
            client.flush()
            streams.append(stream)
        refused = client.until(
            lambda events: any(isinstance(e, h2.events.StreamReset) for e in events)
        )
        reset = next(e for e in refused if isinstance(e, h2.events.StreamReset))
        assert (reset.stream_id, reset.error_code) == (streams[3], 7)  # REFUSED_STREAM
        for stream in streams[:3]:
            client.h2.send_data(stream, b"a" * (size - 900_000), end_stream=True)
            client.flush()
            body, trailers = client.answer(stream)
            assert (len(body), trailers["grpc-status"]) == (size, "0")
    finally:
        client.close()
        server.stop()


def test_ping_is_answered_with_its_payload(raw: RawClient) -> None:
    raw.h2.ping(b"berth!!!")
    raw.flush()
    events = raw.until(lambda ev: any(isinstance(e, h2.events.PingAckReceived) for e in ev))
    ack = next(e for e in events if isinstance(e, h2.events.PingAckReceived))
    assert ack.ping_data == b"berth!!!"


def test_padded_data_and_a_header_block_in_continuations(running: Running) -> None:
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    try:
        encoder = hpack.Encoder()
        block = encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/test.T/Echo"),
                (":authority", "test"),
                ("content-type", "application/grpc"),
                ("x-api-key", "k" * 40_000),  # a block far over one frame of 16 KiB
            ]
        )
        parts = [block[i : i + 16_384] for i in range(0, len(block), 16_384)]
        message = struct.pack(">BI", 0, 5) + b"hello"
        padded = bytes([7]) + message + b"\0" * 7
        frames = [_frame(4, 0, 0, b""), _frame(1, 0, 1, parts[0])]
        frames += [
            _frame(9, 4 if i == len(parts) - 1 else 0, 1, p) for i, p in enumerate(parts[1:], 1)
        ]
        frames.append(_frame(0, 0x1 | 0x8, 1, padded))
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"".join(frames))
        ending: list[bool] = []

        def trailers_end(frame: tuple[int, int, int, bytes]) -> bool:
            if frame[0] == 1 and frame[1] & 0x1:  # HEADERS with END_STREAM: the trailers
                ending.append(True)
            return bool(ending) and frame[0] in (1, 9) and bool(frame[1] & 0x4)

        received = _read_frames(sock, until=trailers_end)
    finally:
        sock.close()
    data = b"".join(
        payload for kind, _flags, stream, payload in received if kind == 0 and stream == 1
    )
    assert data[5:] == b"hello"
    blocks: list[bytes] = []
    for kind, _flags, _stream, payload in received:
        if kind == 1:
            blocks.append(payload)
        elif kind == 9:  # our trailers are over the client's frame size too
            blocks[-1] += payload
    assert blocks[0][0] == 0x20  # a table size of 0 opens our first block: we never index
    decoder = hpack.Decoder()
    trailers = [decoder.decode(block) for block in blocks][-1]
    assert ("grpc-status", "0") in trailers
    assert ("x-seen-key", "k" * 40_000) in trailers
    assert any(kind == 9 for kind, *_ in received)


def test_http1_on_the_grpc_port_is_told_what_the_port_speaks(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 505")
    assert b"speaks gRPC over HTTP/2" in answer


def test_a_request_that_is_no_grpc_call_gets_an_http_status(raw: RawClient) -> None:
    stream = raw.open("/test.T/Echo", end_stream=True, content_type="application/json")
    raw.until(lambda events: any(_ended(e, stream) for e in events))
    response = next(e for e in raw.events if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[":status"] == "415"


def test_a_protocol_violation_ends_the_connection_with_goaway(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + _frame(0, 0, 0, b"xx")
        )
        received = _read_frames(sock, until=lambda frame: frame[0] == 7)
    goaway = received[-1]
    assert goaway[0] == 7
    assert struct.unpack(">I", goaway[3][4:8])[0] == 1  # PROTOCOL_ERROR
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as fresh:
        assert _unary(fresh, "Echo")(b"unharmed", timeout=5) == b"unharmed"


def test_a_bad_deadline_and_a_missing_message_are_the_clients_errors(raw: RawClient) -> None:
    stream = raw.request("/test.T/Echo", b"x", **{"grpc-timeout": "soon"})
    _, trailers = raw.answer(stream)
    assert trailers["grpc-status"] == str(StatusCode.INVALID_ARGUMENT.value)
    assert "grpc-timeout" in trailers["grpc-message"]
    empty = raw.open("/test.T/Echo", end_stream=True)
    _, trailers = raw.answer(empty)
    assert trailers["grpc-status"] == str(StatusCode.INVALID_ARGUMENT.value)


def test_a_deadline_counts_from_the_calls_headers_not_its_last_byte(
    running: Running, raw: RawClient
) -> None:
    # 300 ms to answer, and the message arrives 800 ms after the headers: the deadline has
    # passed by then, however fast the method would be, and the method never runs (half a
    # second to spare for a loaded machine that reads the headers late).
    stream = raw.open("/test.T/Slow", **{"grpc-timeout": "300m"})
    time.sleep(0.8)
    raw.h2.send_data(stream, struct.pack(">BI", 0, 4) + b"0.03", end_stream=True)
    raw.flush()
    _, trailers = raw.answer(stream)
    assert trailers["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED.value)
    assert "0.03" not in running.methods.started
    within = raw.request("/test.T/Slow", b"0.04", **{"grpc-timeout": "5S"})
    assert raw.answer(within)[1]["grpc-status"] == "0"


def test_a_cancel_just_before_the_deadline_is_the_clients_own_timer() -> None:
    # The client's clock starts before ours (its headers take time to reach the loop), so its
    # timer's cancel can arrive a little before our deadline: that is still the deadline.
    async def classify(left: float, lead: float) -> bool:
        deadline = asyncio.get_running_loop().time() + left
        return CallContext({}, "peer", deadline=deadline, client_lead=lead).cancelled_by_deadline()

    assert asyncio.run(classify(0.02, 0.05))
    assert not asyncio.run(classify(0.5, 0.05))  # the client cancelled well before
    assert asyncio.run(classify(-0.01, 0.0))
    assert not CallContext({}, "peer").cancelled_by_deadline()  # no deadline: the client's


def test_an_unknown_encoding_is_unimplemented_with_the_ones_accepted(raw: RawClient) -> None:
    stream = raw.open("/test.T/Echo", **{"grpc-encoding": "snappy"})
    raw.h2.send_data(stream, struct.pack(">BI", 1, 3) + b"abc", end_stream=True)
    raw.flush()
    _, trailers = raw.answer(stream)
    assert trailers["grpc-status"] == str(StatusCode.UNIMPLEMENTED.value)
    assert "gzip" in trailers["grpc-accept-encoding"]
    gzipped = raw.open("/test.T/Echo", **{"grpc-encoding": "gzip"})
    packed = gzip.compress(b"abc")
    raw.h2.send_data(gzipped, struct.pack(">BI", 1, len(packed)) + packed, end_stream=True)
    raw.flush()
    assert raw.answer(gzipped)[0] == b"abc"


def test_a_client_that_reads_nothing_stops_being_read(running: Running) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    sock.setblocking(False)
    pings = _frame(6, 0, 0, b"12345678") * 4096  # 68 KiB of PINGs, each owed an ACK
    sent = 0
    deadline = time.monotonic() + 3
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
        while time.monotonic() < deadline and sent < 64 << 20:
            try:
                sent += sock.send(pings)
            except BlockingIOError:
                time.sleep(0.01)

        async def owed() -> int:
            return max(c.transport.get_write_buffer_size() for c in running.server.connections)

        buffered = running.call(owed())
    finally:
        sock.close()
    assert buffered < 1 << 20, (buffered, sent)  # without the pause: about all it was sent


def test_trailers_on_a_stream_answered_early_are_ignored() -> None:
    server = Running(Methods(), limit=1 << 20)
    encoder = hpack.Encoder()

    def headers(path: str) -> bytes:
        return _call_headers(encoder, path)

    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            slow = struct.pack(">BI", 0, 3) + b"0.5"
            chunk = b"a" * 700_000
            sock.sendall(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
                + _frame(1, 4, 1, headers("/test.T/Slow")) + _frame(0, 1, 1, slow)
                + _frame(1, 4, 3, headers("/test.T/Echo"))
                + _frame(0, 0, 3, struct.pack(">BI", 0, 1_400_000) + chunk) + _frame(0, 0, 3, chunk)
            )  # fmt: skip
            _read_frames(sock, until=lambda frame: frame[0] == 3 and frame[2] == 3)
            sock.sendall(_frame(1, 5, 3, encoder.encode([("x-trailer", "late")])))
            received = _read_frames(sock, until=lambda f: f[0] == 1 and f[1] & 1 and f[2] == 1)
    finally:
        server.stop()
    assert not any(kind == 7 for kind, *_ in received)  # no GOAWAY
    assert b"done" in b"".join(p for kind, _f, stream, p in received if kind == 0 and stream == 1)


def test_a_block_of_table_size_updates_is_refused_at_once(running: Running) -> None:
    block = b"\x20" * 10_000 + hpack.Encoder().encode([(":method", "POST")])
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + _frame(1, 5, 1, block)
        )
        received = _read_frames(sock, until=lambda frame: frame[0] == 7)
    assert time.monotonic() - started < 1
    assert struct.unpack(">I", received[-1][3][4:8])[0] == 9  # COMPRESSION_ERROR


@pytest.mark.parametrize(
    ("kind", "stream", "payload"),
    [
        (0, 2, b"x"),  # DATA on an even stream: ours, and we open none
        (8, 2, struct.pack(">I", 1)),  # WINDOW_UPDATE on it
        (3, 2, struct.pack(">I", 8)),  # RST_STREAM on it
        (8, 99, struct.pack(">I", 1)),  # WINDOW_UPDATE past the client's last stream
    ],
)
def test_a_frame_on_a_stream_never_opened_ends_the_connection(
    running: Running, kind: int, stream: int, payload: bytes
) -> None:
    # Stream 3 is open (a call that waits), so 2 is below the client's last stream.
    opened = _frame(1, 4, 3, _call_headers(hpack.Encoder(), "/test.T/Slow"))
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(_preface() + opened + _frame(kind, 0, stream, payload))
        received = _read_frames(sock, until=lambda frame: frame[0] == 7)
    assert struct.unpack(">I", received[-1][3][4:8])[0] == 1  # GOAWAY, PROTOCOL_ERROR


def test_a_second_goaway_never_names_a_stream_after_the_first_ones() -> None:
    # Stream 1 runs when the server starts to stop (GOAWAY, last stream 1); stream 3 comes
    # after and is ignored; then a protocol error ends the connection. Its GOAWAY must still say
    # 1, or the client would take stream 3 as possibly processed and never retry it.
    server = Running(Methods())
    encoder = hpack.Encoder()
    slow = struct.pack(">BI", 0, 3) + b"5.0"
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                _preface() + _frame(1, 4, 1, _call_headers(encoder, "/test.T/Slow"))
                + _frame(0, 1, 1, slow)
            )  # fmt: skip
            _wait_for(lambda: "5.0" in server.methods.started)
            stopping = asyncio.run_coroutine_threadsafe(server.server.stop(5), server.loop)
            first = _read_frames(sock, until=lambda frame: frame[0] == 7)[-1]
            sock.sendall(
                _frame(1, 4, 3, _call_headers(encoder, "/test.T/Echo")) + _frame(0, 0, 0, b"xx")
            )
            second = _read_frames(sock, until=lambda frame: frame[0] == 7)[-1]
        stopping.result(10)
    finally:
        server.stop()
    assert struct.unpack(">II", first[3][:8]) == (1, 0)  # NO_ERROR, streams up to 1
    assert struct.unpack(">II", second[3][:8]) == (1, 1)  # PROTOCOL_ERROR, still up to 1


def test_a_priority_of_a_wrong_length_resets_its_stream_only(raw: RawClient) -> None:
    stream = raw.open("/test.T/Slow")
    raw.sock.sendall(_frame(2, 0, stream, b"\x00" * 4))
    raw.until(lambda events: any(_ended(e, stream) for e in events))
    reset = next(e for e in raw.events if isinstance(e, h2.events.StreamReset))
    assert reset.error_code == 6  # FRAME_SIZE_ERROR
    assert raw.answer(raw.request("/test.T/Echo", b"fine"))[0] == b"fine"


def test_a_value_with_a_line_break_refuses_the_stream_not_the_connection(raw: RawClient) -> None:
    raw.h2.config.validate_outbound_headers = False  # h2 itself would refuse to send it
    stream = raw.open("/test.T/Echo", end_stream=True, **{"x-request-id": "abc\nset-cookie: x"})
    raw.until(lambda events: any(_ended(e, stream) for e in events))
    reset = next(e for e in raw.events if isinstance(e, h2.events.StreamReset))
    assert reset.error_code == 1  # PROTOCOL_ERROR
    assert raw.answer(raw.request("/test.T/Echo", b"fine"))[0] == b"fine"


def test_a_request_id_with_a_trailing_newline_is_replaced() -> None:
    assert _request_id({"x-request-id": "abc\n"}) != "abc\n"
    assert _request_id({"x-request-id": "abc"}) == "abc"


def test_grpc_message_is_percent_encoded() -> None:
    assert percent_encoded("100% naïve\n") == "100%25 na%C3%AFve%0A"


def _call_headers(encoder: hpack.Encoder, path: str) -> bytes:
    return bytes(
        encoder.encode(
            [(":method", "POST"), (":scheme", "http"), (":path", path),
             (":authority", "t"), ("content-type", "application/grpc")]
        )
    )  # fmt: skip


def _preface() -> bytes:
    """A client's connection preface and its (empty) SETTINGS."""
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I B I", (len(payload) << 8) | kind, flags, stream) + payload


def _read_frames(sock: socket.socket, until: Any) -> list[tuple[int, int, int, bytes]]:
    buffer = b""
    frames: list[tuple[int, int, int, bytes]] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return frames
        buffer += chunk
        while len(buffer) >= 9:
            word, flags, stream = struct.unpack(">I B I", buffer[:9])
            length = word >> 8
            if len(buffer) < 9 + length:
                break
            frame = (word & 0xFF, flags, stream & 0x7FFF_FFFF, buffer[9 : 9 + length])
            buffer = buffer[9 + length :]
            frames.append(frame)
            if until(frame):
                return frames


def _wait_for(check: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.02)
