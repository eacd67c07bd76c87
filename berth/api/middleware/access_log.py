"""Open the logging context of each request and, when enabled, write one access line for it.

Installed just inside the request-id middleware: every line logged while a request is handled
carries its request id (and model and version once a prediction names them), and the access line
sees the final status, including 413 and 503 answered by the middlewares further in. The line has
method, path (never the query string, which may hold credentials), status, latency_ms, client
address and request id; `sample` (0..1) keeps a fraction of them. Uvicorn's own access log is off.
"""

from __future__ import annotations

import logging
import random
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.observability.logging import request_context

log = logging.getLogger("berth.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, enabled: bool = False, sample: float = 1.0) -> None:
        self.app = app
        self.enabled = enabled and sample > 0
        self.sample = sample

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id")
        with request_context(request_id=request_id):
            if not self._sampled():
                await self.app(scope, receive, send)
                return
            status = 500  # what the server answers when the app raises before responding
            started = time.perf_counter()

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, sending)
            finally:
                client = scope.get("client")
                log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        "client": client[0] if client else None,
                    },
                )

    def _sampled(self) -> bool:
        if not self.enabled:
            return False
        # Sampling, not security: a predictable generator is fine here.
        return self.sample >= 1 or random.random() < self.sample  # noqa: S311
