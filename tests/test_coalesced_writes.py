"""A response's head waits for its body, so both leave in one write (berth/api/coalesced_writes.py)."""

from __future__ import annotations

import asyncio

from berth.api.coalesced_writes import CoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording(asyncio.Transport):
    """What reached the socket, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def test_a_head_and_its_body_are_one_write() -> None:
    async def scenario() -> list[bytes]:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(HEAD)
        assert real.writes == []  # held, not sent alone
        assert transport.get_write_buffer_size() == len(HEAD)
        transport.write(b"{}")
        await asyncio.sleep(0)
        return real.writes

    assert asyncio.run(scenario()) == [HEAD + b"{}"]


def test_a_head_alone_leaves_on_the_next_loop_step() -> None:
    async def scenario() -> list[bytes]:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(HEAD)  # a streaming response waiting for its first chunk
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        transport.write(b"chunk")
        return real.writes

    assert asyncio.run(scenario()) == [HEAD, b"chunk"]


def test_closing_sends_a_held_head_first_and_other_writes_pass_through() -> None:
    async def scenario() -> Recording:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 100 Continue")  # not a whole head: passes through
        transport.write(HEAD)
        transport.close()
        await asyncio.sleep(0)
        return real

    real = asyncio.run(scenario())
    assert real.writes == [b"HTTP/1.1 100 Continue", HEAD]
    assert real.closed
