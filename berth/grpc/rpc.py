"""What a gRPC method sees and answers with, whatever carries it: status codes, the call's
context and the method table's entries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum


class StatusCode(IntEnum):
    """gRPC's status codes (statuscodes.md), as they travel in `grpc-status`."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


Metadata = tuple[tuple[str, str], ...]


class RpcError(Exception):
    """Ends a call with `code`; `details` becomes grpc-message, `trailers` extra metadata."""

    def __init__(self, code: StatusCode, details: str, trailers: Metadata = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = trailers


@dataclass
class CallContext:
    metadata: dict[str, str]
    """The client's text metadata: lower-case names, no pseudo-headers, no `-bin` entries."""
    peer: str
    """The client's address."""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    """Trailing metadata sent back whatever the outcome."""
    deadline: float | None = None
    """When the call's `grpc-timeout` runs out, in the event loop's time; None without one."""
    client_lead: float = 0.0
    """How much sooner than `deadline` the client's own timer may cancel the call."""

    def deadline_passed(self) -> bool:
        """Whether the deadline has run out by this server's clock."""
        return self.deadline is not None and asyncio.get_running_loop().time() >= self.deadline

    def cancelled_by_deadline(self) -> bool:
        """Whether a cancellation now is the deadline's (DEADLINE_EXCEEDED), not the client's.

        The client's clock started before ours, by the time its headers took to reach this
        loop, so its own timer's cancel can arrive just before our deadline does.
        """
        if self.deadline is None:
            return False
        return asyncio.get_running_loop().time() >= self.deadline - self.client_lead


Unary = Callable[[bytes, CallContext], Awaitable[bytes]]
"""A serialized request in, a serialized response out."""
ServerStreaming = Callable[[bytes, CallContext], AsyncIterator[bytes]]
"""A serialized request in, serialized responses out until the iterator ends."""


@dataclass(frozen=True)
class Method:
    """One entry of the method table: exactly one of the two is set."""

    unary: Unary | None = None
    streaming: ServerStreaming | None = None


MethodTable = dict[str, Method]
"""`/package.Service/Method` to its method."""
