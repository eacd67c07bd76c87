"""Add `RateLimit-*` headers to responses of requests that passed a rate limit."""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api.auth import RATE_STATE
from berth.security.ratelimit import Decision


class RateHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            decision: Decision | None = scope.get("state", {}).get(RATE_STATE)
            if message["type"] == "http.response.start" and decision is not None:
                message["headers"] = [*message.get("headers", []), *_headers(decision)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    return [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(max(0, math.ceil(decision.reset_seconds))).encode()),
    ]
