"""Give every request an id (the caller's `X-Request-ID`, or a new one) and return it."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api.middleware.asgi import with_headers
from berth.serving.ids import REQUEST_ID_PATTERN, new_id

_SAFE_ID = re.compile(REQUEST_ID_PATTERN.encode())


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming(scope) or new_id().encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()

        header = [(b"x-request-id", request_id)]
        await self.app(scope, receive, with_headers(send, lambda: header))


def _incoming(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _SAFE_ID.fullmatch(value):
            return bytes(value)
    return None
