"""Whatever bytes a client sends, the HTTP/2 connection answers with frames or a GOAWAY: no
exception escapes, and none reaches the catch-all that logs a bug (hypothesis, in process)."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.grpc.http2 import PREFACE, Connection, Stream


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, _name: str) -> Any:
        return ("127.0.0.1", 5000)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I B I", (len(payload) << 8) | kind, flags, stream) + payload


HEADERS = hpack.Encoder().encode(
    [(":method", "POST"), (":path", "/x.Y/Z"), ("content-type", "application/grpc")]
)

frames = st.builds(
    _frame,
    kind=st.integers(0, 11),
    flags=st.sampled_from([0, 1, 4, 5, 8, 9, 0x20, 0x25, 0x2D, 0xFF]),
    stream=st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
    payload=st.one_of(
        st.binary(max_size=40),
        st.just(HEADERS),
        st.just(struct.pack(">HI", 4, 2**31)),  # SETTINGS with a window over the limit
        st.just(struct.pack(">I", 0)),
        st.just(b"\x07" + b"x" * 3),  # padding longer than the frame
    ),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.lists(frames, max_size=8),
    settings_first=st.booleans(),
    cut=st.integers(1, 64),
)
def test_any_frames_end_in_an_answer_or_goaway_never_a_bug(
    body: list[bytes], settings_first: bool, cut: int
) -> None:
    data = PREFACE + (_frame(4, 0, 0, b"") if settings_first else b"") + b"".join(body)

    async def feed() -> Transport:
        answered: list[Stream] = []
        connection = Connection(answered.append, lambda _c: None, 1 << 20)
        transport = Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        for start in range(0, len(data), cut):  # in pieces, as TCP may deliver them
            connection.data_received(data[start : start + cut])
        for stream in answered:
            stream.send_headers(b"\x88", end_stream=True)
        await asyncio.sleep(0)
        connection.connection_lost(None)
        return transport

    bugs = Errors()
    logger = logging.getLogger("berth.grpc")
    logger.addHandler(bugs)
    try:
        transport = asyncio.run(feed())
    finally:
        logger.removeHandler(bugs)
    assert not bugs.records, bugs.records[0].getMessage()
    assert transport.written.startswith(b"\x00\x00")  # our SETTINGS: the preface was taken


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
