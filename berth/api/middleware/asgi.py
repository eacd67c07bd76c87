"""Small pieces the pure-ASGI middlewares share: a JSON error answer and header injection."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import Message, Send

Headers = list[tuple[bytes, bytes]]


async def send_error(send: Send, status: int, message: str, headers: Headers | None = None) -> None:
    """Answer `{"error": message}` without reaching the app."""
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def with_headers(send: Send, extra: Callable[[], Headers]) -> Send:
    """`send`, with `extra()` headers appended to the response start."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra()]
        await send(message)

    return sending
