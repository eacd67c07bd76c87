"""Cap concurrent prediction requests per worker: beyond the cap, 503 at once, no queue.

An unbounded queue turns overload into timeouts for everyone; refusing early keeps latency for
admitted requests and tells clients (and load balancers) to retry elsewhere.
"""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api.middleware.asgi import send_error
from berth.api.prediction_routes import is_prediction
from berth.observability.metrics import REQUESTS_IN_FLIGHT as IN_FLIGHT

SHED = Counter(
    "berth_requests_shed", "Prediction requests refused because the worker was at capacity."
)


class LoadSheddingMiddleware:
    def __init__(self, app: ASGIApp, max_concurrent: int) -> None:
        self.app = app
        self.max_concurrent = max_concurrent
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_prediction(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrent:
            SHED.inc()
            await _refuse(send, self.max_concurrent)
            return
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()


async def _refuse(send: Send, limit: int) -> None:
    await send_error(
        send,
        503,
        f"the server is at its limit of {limit} concurrent predictions; retry shortly "
        "(or raise BERTH_MAX_CONCURRENT_REQUESTS / add workers)",
        [(b"retry-after", b"1")],
    )
