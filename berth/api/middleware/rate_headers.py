"""Add `RateLimit-*` headers to responses of requests that passed a rate limit."""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api.auth import RATE_STATE
from berth.api.middleware.asgi import Headers, with_headers
from berth.security.ratelimit import Decision


class RateHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def headers() -> Headers:
            decision: Decision | None = scope.get("state", {}).get(RATE_STATE)
            return _headers(decision) if decision is not None else []

        await self.app(scope, receive, with_headers(send, headers))


def _headers(decision: Decision) -> Headers:
    return [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(max(0, math.ceil(decision.reset_seconds))).encode()),
    ]
