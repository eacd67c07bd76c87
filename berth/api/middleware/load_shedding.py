"""Cap concurrent prediction requests per worker: beyond the cap, 503 at once, no queue.

The cap itself (`berth.serving.admission`) is the process's: gRPC calls count against it too.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api.middleware.asgi import send_error
from berth.api.prediction_routes import is_prediction
from berth.serving.admission import ConcurrencyCap


class LoadSheddingMiddleware:
    def __init__(self, app: ASGIApp, cap: ConcurrencyCap) -> None:
        self.app = app
        self.cap = cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_prediction(scope["path"]):
            await self.app(scope, receive, send)
            return
        if not self.cap.enter():
            await send_error(send, 503, self.cap.refusal(), [(b"retry-after", b"1")])
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.cap.leave()
